"""What a script is: typed shapes, decoded once at the edge.

Upload metadata (Cloudflare's multipart upload metadata), its bindings (one
tagged union on ``type``), tail consumers and the stored :class:`ScriptRecord`
are msgspec Structs. The admin API, project folders and the CLI decode raw
JSON into them with :func:`decode_metadata`; everything after the edge holds
typed values and never re-validates or reads ``.get()`` chains.

A new binding type is one Struct here (added to :data:`Binding`) and the code
that serves it. ``to_bundle`` decides what of a binding a child may see.

This module imports nothing of the supervisor but its domain errors: every
other part may use it.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

import msgspec

from protocol import messages
from supervisor.errors import Invalid

#: Namespace name under which platform scripts (dispatcher, outbound, tail) live.
PLATFORM = ""

#: Namespace and script names: 1-63 of ``A-Z a-z 0-9 _ -``. Narrow on purpose:
#: names end up in host names, URL paths, log lines and metric labels.
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,63}")  # fullmatch: "$" would let a trailing newline in
MAX_TAGS = 8  # Cloudflare's limit per script
MAX_TAG_LENGTH = 256
MAX_BINDINGS = 1000
MAX_TAIL_CONSUMERS = 100
MAX_CRONS = 5  # Cloudflare allows up to 5 cron triggers per Worker (paid)

#: A Worker's name as Cloudflare accepts it at upload: lowercase letters,
#: digits, '-' and '_', not starting with '-' (the Workers API's own pattern,
#: which wrangler checks with too), at most 63 characters (a DNS label: the
#: name becomes a workers.dev host).
UPLOAD_NAME_RE = re.compile(r"[a-z0-9_][a-z0-9_-]{0,62}")
#: Cloudflare's error for any other name (workers.api.error.invalid_script_name).
INVALID_SCRIPT_NAME_CODE = 10016
#: Cloudflare's Workers limits: 128 environment variables per Worker (Workers
#: Paid; 64 on Free), each value at most 5 KB. Text, JSON and secret bindings
#: all count, as they are all variables on ``env``.
MAX_VARIABLES = 128
MAX_VARIABLE_BYTES = 5 * 1024
#: A validation error, as Cloudflare reports what the runtime refuses in an upload.
VALIDATION_FAILED_CODE = 10021

ScriptName = Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


def check_name(kind: str, name: object) -> str:
    """A namespace or script name, or :class:`Invalid` saying what names may be."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise Invalid(f"invalid {kind} name {shown}: use 1 to 63 letters, digits, '_' or '-'")
    return name


def check_upload_name(name: str) -> str:
    """A new version's script name, as Cloudflare takes it (:data:`UPLOAD_NAME_RE`):
    stricter than :func:`check_name`, which still reads names stored before
    uploads were held to it (an uppercase one can be read and deleted)."""
    if not UPLOAD_NAME_RE.fullmatch(name):
        shown = repr(name) if len(name) <= 80 else repr(name[:77] + "...")
        raise Invalid(f"invalid Worker name {shown}: a Worker's name is 1 to 63 lowercase letters, digits, "
                      "'-' or '_', not starting with '-'", code=INVALID_SCRIPT_NAME_CODE)
    return name


def var_binding(name: str, value: Any) -> PlainText | Json:
    """A variable as a binding, as Wrangler's ``vars`` make them: text stays
    text, anything else is JSON."""
    return PlainText(name=name, text=value) if isinstance(value, str) else Json(name=name, json=value)


#: A file in every bundle folder (supervisor.pool.bundles), never a module.
BUNDLE_MARKER = ".corral-bundle"


def module_path_ok(path: str) -> bool:
    """A module's name in a bundle becomes a file path and an import path:
    relative, no '..', no empty parts, nothing a filesystem reads otherwise,
    and not the bundle's own marker file (supervisor.pool.bundles.MARKER)."""
    parts = path.split("/")
    return (0 < len(path) <= 512 and not path.startswith("/") and "\\" not in path
            and "\0" not in path and not any(p in ("", ".", "..") for p in parts)
            and path != BUNDLE_MARKER)


def check_tag(tag: object) -> str:
    """Tags are free text except for ',' (the list separator) and control characters."""
    if not isinstance(tag, str) or not tag:
        raise Invalid(f"invalid tag {tag!r}: tags are non-empty strings")
    if len(tag) > MAX_TAG_LENGTH:
        raise Invalid(f"tag {tag[:40]!r}... is longer than {MAX_TAG_LENGTH} characters")
    if "," in tag or any(ord(c) < 0x20 or c == "\x7f" for c in tag):
        raise Invalid(f"invalid tag {tag!r}: tags cannot contain ',' or control characters")
    if tag != tag.strip():
        # A filter (?tags=a,b) is read with each item stripped: such a tag
        # could be set and never found again.
        raise Invalid(f"invalid tag {tag!r}: tags cannot begin or end with a space")
    return tag


def _identifier(what: str, name: str) -> None:
    if not name.isidentifier():
        raise Invalid(f"{what} {name!r} must be a valid identifier (it becomes env.{name})"
                      if what == "binding name" else f"{what} {name!r} must be an identifier")


# ---------------------------------------------------------------------------
# Bindings: one tagged union on "type", Cloudflare's field names
# ---------------------------------------------------------------------------


class _Binding(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True, frozen=True):
    name: str

    def __post_init__(self) -> None:
        _identifier("binding name", self.name)


class PlainText(_Binding, tag="plain_text"):
    """A string on ``env``."""

    text: str


class SecretText(_Binding, tag="secret_text"):
    """A string on ``env`` that the API never shows again."""

    text: str


class Json(_Binding, tag="json"):
    """A JSON value on ``env`` (``[vars]`` tables too)."""

    json: Any


class KvNamespace(_Binding, tag="kv_namespace"):
    namespace_id: NonEmpty


class D1(_Binding, tag="d1"):
    id: NonEmpty


class R2Bucket(_Binding, tag="r2_bucket"):
    bucket_name: NonEmpty
    jurisdiction: str | None = None


class Service(_Binding, tag="service"):
    """``env.NAME.fetch(...)`` invokes the platform script ``service``;
    ``env.NAME.method(...)`` calls a method of its entrypoint (Workers RPC):
    ``Default``, or the class ``entrypoint`` names."""

    service: ScriptName
    environment: str | None = None
    entrypoint: str | None = None
    #: What the callee reads as ``ctx.props`` on every call through this
    #: binding (Cloudflare's service binding props: who the caller is).
    props: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_name("script", self.service)
        if self.entrypoint and not self.entrypoint.isidentifier():
            raise Invalid(f"binding {self.name!r}: entrypoint {self.entrypoint[:80]!r} is not a "
                          "class name (a WorkerEntrypoint class of the service's main module)")


class Assets(_Binding, tag="assets"):
    """``env.NAME.fetch(request)`` serves the script's own static assets."""


class OutboundWorker(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    service: ScriptName
    environment: str | None = None

    def __post_init__(self) -> None:
        check_name("script", self.service)


class OutboundParam(msgspec.Struct, kw_only=True, frozen=True):
    name: str

    def __post_init__(self) -> None:
        _identifier("outbound param", self.name)


class Outbound(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """The platform's outbound worker for a namespace's user workers, and the
    parameters the dispatcher passes it per call."""

    worker: OutboundWorker | None = None
    #: ``{"name": ...}`` objects as the API reference has them, or plain names
    #: as Cloudflare's SDKs and Terraform send them; held as objects.
    params: list[OutboundParam | str] = []

    def __post_init__(self) -> None:
        if any(isinstance(p, str) for p in self.params):
            msgspec.structs.force_setattr(self, "params", [
                OutboundParam(name=p) if isinstance(p, str) else p for p in self.params])


class DispatchNamespace(_Binding, tag="dispatch_namespace"):
    """``env.NAME.get(script)`` invokes user workers of ``namespace``."""

    namespace: str
    outbound: Outbound | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_name("namespace", self.namespace)


class DurableObjectNamespace(_Binding, tag="durable_object_namespace"):
    """``env.NAME.get(id)``: objects of ``class_name``, defined in ``script_name``
    (default: the binding's own script) of the same dispatch namespace."""

    class_name: NonEmpty
    script_name: ScriptName | None = None
    environment: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _identifier("class_name", self.class_name)
        if self.script_name is not None:
            check_name("script", self.script_name)


class Queue(_Binding, tag="queue"):
    """``env.NAME.send(body)``: a producer of the queue ``queue_name`` (scoped
    to the script's dispatch namespace)."""

    queue_name: NonEmpty
    delivery_delay: int | None = None


class ScriptLimits(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """A script's own limits (Cloudflare's upload metadata ``limits``,
    wrangler's ``[limits]``): they lower what its invocations may use, never
    raise it past the platform's (supervisor.limits.policy)."""

    cpu_ms: Annotated[int, msgspec.Meta(gt=0)] | None = None
    subrequests: Annotated[int, msgspec.Meta(gt=0)] | None = None


class QueueConsumer(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """The script consumes ``queue`` (Wrangler's ``queues.consumers`` entry).

    Corral's own metadata key (``queue_consumers``), which `corral deploy`
    sends; Cloudflare's tools set consumers through its queues API
    (:mod:`supervisor.admin.queues_api`), which makes them this too.
    """

    queue: NonEmpty
    max_batch_size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    max_batch_timeout: Annotated[float, msgspec.Meta(ge=0, le=60)] = 5.0
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 3
    dead_letter_queue: str | None = None
    retry_delay: Annotated[int, msgspec.Meta(ge=0, le=43200)] = 0
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.dead_letter_queue == self.queue:
            # Each dead message came back as new, for ever (~230 invocations a second).
            raise ValueError(f"dead_letter_queue {self.queue!r} is the queue itself: its dead messages would "
                             "come back for ever")


class WorkerLoader(_Binding, tag="worker_loader"):
    """``env.NAME.get(id, callback)`` / ``env.NAME.load(code)``: Dynamic Workers,
    Python workers whose code the script hands over at run time
    (supervisor.calls.dynamic_workers)."""


class RateLimitSimple(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """A rate limit's ``simple`` rule: ``limit`` calls per key every ``period``
    seconds (Cloudflare allows 10 or 60); once over it, a key stays refused for
    ``mitigation_timeout`` seconds when that is set (0, 10, or whole minutes up
    to a day, and at least the period)."""

    limit: Annotated[float, msgspec.Meta(gt=0)]
    period: Literal[10, 60]
    mitigation_timeout: Annotated[int, msgspec.Meta(ge=0, le=86400)] = 0

    def __post_init__(self) -> None:
        timeout = self.mitigation_timeout
        if timeout and (timeout < self.period or (timeout != 10 and timeout % 60)):
            raise Invalid(f"mitigation_timeout must be 0, 10 or a multiple of 60 up to 86400, and "
                          f"at least the period ({self.period}), not {timeout}")


class RateLimit(_Binding, tag="ratelimit"):
    """``await env.NAME.limit(key=...)`` -> ``{"success": bool}``: Cloudflare's
    Rate Limiting binding; its counters are keyed by ``namespace_id`` within the
    script's dispatch namespace (supervisor.bindings.rate_limit)."""

    namespace_id: NonEmpty
    simple: RateLimitSimple


class VersionMetadata(_Binding, tag="version_metadata"):
    """``env.NAME.id`` / ``.tag`` / ``.timestamp``: the running version's id,
    its tag (Corral's versions have none: "") and when it was uploaded."""


class Inherit(_Binding, tag="inherit"):
    """Upload only: keep the deployed binding of this name (how a redeploy
    keeps a secret it never sees again); of ``old_name``, renamed to
    ``name``; from version ``version_id`` (or ``"latest"``, the default)."""

    old_name: str | None = None
    version_id: str | None = None


#: Every binding a stored script may hold.
Binding = Union[PlainText, SecretText, Json, KvNamespace, D1, R2Bucket, Service, DispatchNamespace,
                Assets, DurableObjectNamespace, Queue, WorkerLoader, RateLimit, VersionMetadata]
#: What upload metadata may say (``inherit`` is resolved at the edge).
BindingSpec = Union[PlainText, SecretText, Json, KvNamespace, D1, R2Bucket, Service,
                    DispatchNamespace, Assets, DurableObjectNamespace, Queue, WorkerLoader, RateLimit,
                    VersionMetadata, Inherit]
#: Bindings the supervisor serves through ``BindingCall`` (supervisor.bindings):
#: the child sees only their name and type. Durable Objects and queues join here.
BROKERED: tuple[type, ...] = (KvNamespace, D1, R2Bucket, DurableObjectNamespace, Queue, WorkerLoader,
                              RateLimit)
BINDING_TYPES = tuple(cls.__struct_config__.tag for cls in BindingSpec.__args__)  # type: ignore[attr-defined]


class TailConsumer(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    service: ScriptName
    environment: str | None = None
    namespace: str | None = None

    def __post_init__(self) -> None:
        check_name("script", self.service)


# ---------------------------------------------------------------------------
# Upload metadata and the stored record
# ---------------------------------------------------------------------------


HtmlHandling = Literal["auto-trailing-slash", "force-trailing-slash", "drop-trailing-slash", "none"]
NotFoundHandling = Literal["none", "404-page", "single-page-application"]


#: Longest ``_redirects`` or ``_headers`` text: 2,100 rules of 2,000 characters fit in 4 MiB.
MAX_RULES_TEXT = 4 * 1024 * 1024


class AssetConfig(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """How a script's static assets are served (Wrangler's ``assets`` keys)."""

    html_handling: HtmlHandling = "auto-trailing-slash"
    not_found_handling: NotFoundHandling = "none"
    #: True, False, or patterns (``"/api/*"``, ``"!/api/docs/*"``) that reach the worker first.
    run_worker_first: bool | list[str] = False
    #: The text of the site's ``_redirects`` and ``_headers`` files (Wrangler
    #: sends them so, not as assets; see supervisor.edge.asset_rules).
    redirects: Annotated[str, msgspec.Meta(max_length=MAX_RULES_TEXT)] = msgspec.field(
        default="", name="_redirects")
    headers: Annotated[str, msgspec.Meta(max_length=MAX_RULES_TEXT)] = msgspec.field(
        default="", name="_headers")

    def __post_init__(self) -> None:
        if isinstance(self.run_worker_first, list):
            check_static_routing(self.run_worker_first)


#: Cloudflare's bounds on a ``run_worker_first`` list and on each of its
#: rules (workers-shared's parseStaticRouting, MAX_ROUTES_RULE_LENGTH).
MAX_STATIC_ROUTING_RULES = 100
MAX_STATIC_ROUTING_RULE_LENGTH = 100


def check_static_routing(rules: list[str]) -> None:
    """A ``run_worker_first`` list as Cloudflare's parseStaticRouting takes
    it: each rule a path (``/...``) or an exclusion (``!/...``), at least one
    that is not an exclusion, none twice, at most 100. A rule without its
    ``/`` never matched, and the worker in front of those paths (its auth,
    say) was silently not."""
    if not rules:
        raise Invalid("assets.run_worker_first: an empty list routes nothing to the worker: give at least "
                      "one rule (\"/api/*\"), or true or false")
    if len(rules) > MAX_STATIC_ROUTING_RULES:
        raise Invalid(f"assets.run_worker_first: {len(rules)} rules, more than the "
                      f"{MAX_STATIC_ROUTING_RULES} allowed")
    seen: set[str] = set()
    for rule in rules:
        if not (rule.startswith("/") or rule.startswith("!/")):
            raise Invalid(f"assets.run_worker_first: rule {rule[:80]!r} must start with '/' "
                          "(or '!/' to exclude paths)")
        if len(rule) > MAX_STATIC_ROUTING_RULE_LENGTH:
            raise Invalid(f"assets.run_worker_first: rule {rule[:80]!r}... is longer than "
                          f"{MAX_STATIC_ROUTING_RULE_LENGTH} characters")
        if rule in seen:
            raise Invalid(f"assets.run_worker_first: rule {rule[:80]!r} is given twice")
        seen.add(rule)
    if all(rule.startswith("!") for rule in rules):
        raise Invalid("assets.run_worker_first: only exclusions ('!/...'): give at least one rule of the "
                      "paths the worker runs first for")


class AssetEntry(msgspec.Struct, array_like=True, frozen=True):
    """One asset of a script version: its content hash and size."""

    hash: str
    size: int


class AssetSet(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """A script version's assets: ``/path`` -> content, and how they are served."""

    config: AssetConfig = AssetConfig()
    manifest: dict[str, AssetEntry] = {}


class UploadAssets(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``metadata.assets``: the completion token of an asset upload session
    (Cloudflare calls it ``jwt``) and how the assets are served."""

    jwt: str | None = None
    config: AssetConfig = AssetConfig()


#: Cloudflare's limits on a version's annotations: its tag at most 100 bytes
#: (longer is refused), its message cut to 1000 bytes.
MAX_VERSION_TAG_BYTES = 100
MAX_VERSION_MESSAGE_BYTES = 1000


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"{what} must be valid Unicode text") from None


class VersionAnnotations(msgspec.Struct, kw_only=True):
    """``metadata.annotations`` of an upload (``wrangler versions upload
    --tag T --message M``): the version's tag and
    message, which its trace events' ``scriptVersion`` carries. Other keys
    (``workers/triggered_by``, a CI's ``workers/repository_url``) are ignored."""

    tag: str | None = msgspec.field(default=None, name="workers/tag")
    message: str | None = msgspec.field(default=None, name="workers/message")

    def __post_init__(self) -> None:
        if self.tag is not None and len(_utf8(self.tag, "annotations['workers/tag']")) > MAX_VERSION_TAG_BYTES:
            raise Invalid(f"annotations['workers/tag'] is longer than {MAX_VERSION_TAG_BYTES} bytes")
        if self.message is not None:
            data = _utf8(self.message, "annotations['workers/message']")
            if len(data) > MAX_VERSION_MESSAGE_BYTES:  # cut, as Cloudflare cuts it
                self.message = data[:MAX_VERSION_MESSAGE_BYTES].decode("utf-8", "ignore")


class UploadMetadata(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Cloudflare's multipart upload metadata, as far as Corral uses it.

    Keys Corral does not use yet are ignored, as the SDKs send more than
    any one runtime reads. ``tags`` absent (None) keeps the deployed tags.
    """

    main_module: str | None = None
    bindings: Annotated[list[BindingSpec], msgspec.Meta(max_length=MAX_BINDINGS)] = []
    tags: list[str] | None = None
    compatibility_date: str = ""
    compatibility_flags: list[str] = []
    tail_consumers: Annotated[list[TailConsumer], msgspec.Meta(max_length=MAX_TAIL_CONSUMERS)] = []
    keep_bindings: list[str] = []
    #: Cron triggers (Wrangler's ``triggers.crons``): ``scheduled()`` runs on each.
    crons: Annotated[list[str], msgspec.Meta(max_length=MAX_CRONS)] = []
    assets: UploadAssets | None = None
    #: Durable Object class migrations (Cloudflare's ``migrations``): accepted
    #: and stored; an object's storage is created on first use.
    migrations: Any = None
    #: Queues this script consumes (Corral's key; see :class:`QueueConsumer`).
    queue_consumers: list[QueueConsumer] = []
    annotations: VersionAnnotations | None = None
    limits: ScriptLimits | None = None

    def __post_init__(self) -> None:
        if self.compatibility_date:
            try:
                datetime.date.fromisoformat(self.compatibility_date)
                valid = len(self.compatibility_date) == 10
            except ValueError:
                valid = False
            if not valid:
                raise Invalid(f"compatibility_date must be a date like 2025-06-01, "
                              f"got {self.compatibility_date[:40]!r}")
            # Cloudflare's API refuses a date to come (a day's slack for time zones).
            tomorrow = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=1)
            if datetime.date.fromisoformat(self.compatibility_date) > tomorrow:
                raise Invalid(f"Can't set compatibility date in the future: {self.compatibility_date} "
                              f"(today is {tomorrow - datetime.timedelta(days=1)})", code=VALIDATION_FAILED_CODE)
        names: set[str] = set()
        for binding in self.bindings:
            if binding.name in names:
                raise Invalid(f"two bindings are named {binding.name!r}")
            names.add(binding.name)
        if self.tags is not None:
            for tag in self.tags:
                check_tag(tag)


class LoadCheck(msgspec.Struct, frozen=True):
    """What loading a script in a throw-away sandbox found (``Pool.validate``)."""

    #: Why it did not load; None if it did.
    error: str | None = None
    handlers: tuple[str, ...] = ()
    #: The classes its main module exports (a Durable Object binding names one).
    classes: tuple[str, ...] = ()


class ScriptRecord(msgspec.Struct, kw_only=True):
    """A deployed script version, as stored and as the request path sees it."""

    namespace: str  # PLATFORM ("") for platform scripts
    name: str
    version: str
    main_module: str
    modules: dict[str, bytes]
    bindings: list[Binding] = []
    tags: list[str] = []
    compatibility_date: str = ""
    compatibility_flags: list[str] = []
    tail_consumers: list[TailConsumer] = []
    crons: list[str] = []
    assets: AssetSet | None = None
    created_on: str = ""
    modified_on: str = ""
    #: The immutable version this record is (Cloudflare's version id); ``version``
    #: above is the content hash of its bundle, what a warm child is keyed by.
    version_id: str = ""
    #: When that version was uploaded (ISO 8601, UTC).
    version_created_on: str = ""
    #: That version's tag and message (its upload's ``workers/tag`` and
    #: ``workers/message`` annotations; "" when it has none).
    version_tag: str = ""
    version_message: str = ""
    #: Normalised requirement strings (``text/x-python-requirement`` parts) and
    #: the package store's lock they resolved to ("" when there are none).
    requirements: list[str] = []
    packages_lock: str = ""
    queue_consumers: list[QueueConsumer] = []
    #: The handlers its code defines (``fetch``, ``scheduled``, ...), as its
    #: validation found them; empty for a record stored before they were kept.
    handlers: list[str] = []
    #: Its own limits, which only lower the platform's.
    limits: ScriptLimits | None = None

    def binding(self, name: str, kind: type[_Binding]) -> Any:
        """The binding ``name`` of type ``kind``, or None."""
        for binding in self.bindings:
            if binding.name == name and type(binding) is kind:
                return binding
        return None


def _dewrangle(raw: Any) -> Any:
    """Accept Wrangler's spellings where they differ from the API's."""
    if isinstance(raw, dict) and isinstance(raw.get("bindings"), list):
        bindings = []
        for binding in raw["bindings"]:
            if isinstance(binding, dict) and binding.get("type") == "d1" \
                    and "id" not in binding and "database_id" in binding:
                binding = {**binding, "id": binding["database_id"]}
            bindings.append(binding)
        raw = {**raw, "bindings": bindings}
    return raw


def decode_metadata(raw: Any) -> UploadMetadata:
    """Raw upload metadata (already JSON-decoded) as :class:`UploadMetadata`.

    Raises :class:`Invalid` with msgspec's account of what is wrong and where
    (``... - at `$.bindings[0].text```).
    """
    if not isinstance(raw, dict):
        raise Invalid("the metadata must be a JSON object")
    try:
        metadata = msgspec.convert(_dewrangle(raw), UploadMetadata)
    except msgspec.ValidationError as exc:
        raise Invalid(f"invalid metadata: {_explain(str(exc))}") from None
    check_compatibility_flags(metadata.compatibility_flags)
    return metadata


def check_compatibility_flags(flags: list[str]) -> None:
    """Refuse a flag Cloudflare's runtime does not know, in workerd's words
    (a typo would otherwise be stored and do nothing)."""
    from supervisor.compat_flags import KNOWN_FLAGS

    for flag in flags:
        if flag not in KNOWN_FLAGS:
            shown = flag if len(flag) <= 80 else flag[:77] + "..."
            raise Invalid(f"No such compatibility flag: {shown}", code=VALIDATION_FAILED_CODE)


def check_variables(bindings: list[Binding]) -> None:
    """Cloudflare's limits on a Worker's environment variables (text, JSON
    and secrets): at most :data:`MAX_VARIABLES` of them, each value at most
    :data:`MAX_VARIABLE_BYTES` (a secret up to the upload's size limit was
    stored, and handed to every child that runs the script)."""
    count = 0
    for binding in bindings:
        if isinstance(binding, (PlainText, SecretText)):
            size, kind = len(binding.text.encode("utf-8", "surrogatepass")), type(binding).__struct_config__.tag
        elif isinstance(binding, Json):
            size, kind = len(msgspec.json.encode(binding.json)), "json"
        else:
            continue
        count += 1
        if size > MAX_VARIABLE_BYTES:
            raise Invalid(f"{kind} binding {binding.name!r} is {size} bytes, over the environment variable "
                          f"size limit of 5 KB ({MAX_VARIABLE_BYTES} bytes)")
    if count > MAX_VARIABLES:
        raise Invalid(f"the script has {count} environment variables (text, JSON and secret bindings), "
                      f"over the limit of {MAX_VARIABLES} per Worker")


def undecodable_module(modules: dict[str, bytes]) -> str | None:
    """Why a ``.py`` module cannot be read as Python source (not UTF-8, nor
    the encoding its coding line declares), or None. Such a module was
    deployed without a word and failed only when imported, in production."""
    import io
    import tokenize

    for path, code in modules.items():
        if not path.endswith(".py"):
            continue
        try:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(code).readline)
        except SyntaxError as exc:
            if "encoding declaration" not in str(exc.msg):  # a coding line naming no codec, say
                return f"{path}: {exc.msg}"
            encoding = "utf-8"  # its first lines are not UTF-8, and declare nothing
        try:
            code.decode(encoding)
        except UnicodeDecodeError as exc:
            return (f"{path} is not {exc.encoding} text (byte {exc.start}): Python modules are UTF-8 "
                    "unless a coding line (# -*- coding: NAME -*-) says otherwise")
    return None


def _explain(message: str) -> str:
    """msgspec's words, with the known types where the binding type is wrong."""
    if message.endswith(".type`") or "required field `type`" in message:
        return f"{message} (known binding types: {', '.join(BINDING_TYPES)})"
    return message


def resolve_bindings(metadata: UploadMetadata, previous: ScriptRecord | None, *, strict: bool = True,
                     versions: Mapping[str, list[Binding]] | None = None,
                     keep_secrets: bool = False) -> list[Binding]:
    """The bindings to store: ``inherit`` and ``keep_bindings`` carry
    ``previous``'s over (the script's newest version, deployed or not, as
    Cloudflare's ``inherit`` "defaults to inheriting the binding from the
    latest version"); an ``inherit`` naming a ``version_id`` takes it from
    ``versions`` (each version's bindings, by id). One that names nothing is
    refused if ``strict`` (Cloudflare's ``bindings_inherit=strict``), else
    dropped, as Cloudflare drops it "silently". ``keep_secrets`` (an upload
    of code): the secrets stay unless the upload binds their names, as a
    Worker's secrets outlive its deploys on Cloudflare (wrangler deploy
    sends none of them, nor keep_bindings for them)."""
    old = {b.name: b for b in previous.bindings} if previous else {}
    out: list[Binding] = []
    seen: set[str] = set()
    for binding in metadata.bindings:
        if isinstance(binding, Inherit):
            if binding.old_name:
                seen.add(binding.old_name)  # renamed: the old name is kept no more
            found = _inherited(binding, old, versions or {}, strict)
            if found is None:
                continue
            out.append(found)
        else:
            out.append(binding)
        seen.add(binding.name)
    for name, binding in old.items():
        kept = type(binding).__struct_config__.tag in metadata.keep_bindings or (
            keep_secrets and isinstance(binding, SecretText))
        if kept and name not in seen:
            out.append(binding)
            seen.add(name)
    return out


def _inherited(binding: Inherit, latest: dict[str, Binding], versions: Mapping[str, list[Binding]],
               strict: bool) -> Binding | None:
    """The binding an ``inherit`` takes, renamed to its name; None (dropped) or
    :class:`Invalid` (``strict``) if there is none."""
    source = binding.old_name or binding.name
    if binding.version_id in (None, "latest"):
        pool, where = latest, "the script's latest version"
    else:
        pool = {b.name: b for b in versions.get(binding.version_id, [])}  # type: ignore[arg-type]
        where = f"version {binding.version_id!r}" if binding.version_id in versions else \
            f"version {binding.version_id!r}, which the script does not have,"
    found = pool.get(source)
    if found is None:
        if strict:
            raise Invalid(f"binding {binding.name!r} has type 'inherit' but {where} has no binding named "
                          f"{source!r} (without bindings_inherit=strict it is dropped)")
        return None
    return found if found.name == binding.name else msgspec.structs.replace(found, name=binding.name)


#: The first field of every content hash: a new encoding gets a new tag, so
#: its versions can never equal an older encoding's.
_CONTENT_TAG = b"corral.content_version.v2"


def content_version(main_module: str, modules: dict[str, bytes], bindings: list[Binding],
                    compatibility_date: str, compatibility_flags: list[str] = (),  # type: ignore[assignment]
                    packages_lock: str = "", extra: Any = None) -> str:
    """A stable hash of everything that changes behaviour (code, bindings,
    packages, crons and assets).

    Injective: every field is length-prefixed, after a tag naming the
    encoding, so two different scripts cannot share a version (the version
    names the bundle folder, shared by every script with that content). The
    first encoding joined ``"\\0" + path + "\\0" + data`` without lengths, and
    data may hold NULs: ``{"x": b"a\\0y\\0b"}`` and ``{"x": b"a", "y": b"b"}``
    collided. Versions stored under it keep their ids (a record's version is
    stored, never recomputed); only new uploads get the new hash.
    """
    digest = hashlib.sha256()

    def field(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "big") + data)

    field(_CONTENT_TAG)
    field(main_module.encode())
    field(str(len(modules)).encode())
    for path in sorted(modules):
        field(path.encode())
        field(modules[path])
    field(msgspec.json.encode({"bindings": bindings, "compatibility_date": compatibility_date}))
    field(msgspec.json.encode(sorted(compatibility_flags)))
    field(packages_lock.encode())
    field(msgspec.json.encode(extra or None))
    return digest.hexdigest()[:32]


def record_version(record: ScriptRecord) -> str:
    """:func:`content_version` of a record: what its upload hashes (code,
    bindings, packages, and its crons, assets and queue consumers when it has
    any), so a version made from a record (a settings edit, new schedules)
    names its content as an upload of it would."""
    extra = None
    if record.crons or record.assets or record.queue_consumers:
        extra = {"crons": record.crons, "assets": record.assets,
                 **({"queue_consumers": record.queue_consumers} if record.queue_consumers else {})}
    return content_version(record.main_module, record.modules, record.bindings, record.compatibility_date,
                           record.compatibility_flags, record.packages_lock, extra=extra)


def public_binding(binding: Binding) -> dict[str, Any]:
    """A binding as the API shows it: secrets without their text."""
    if isinstance(binding, SecretText):
        return {"type": "secret_text", "name": binding.name}
    return msgspec.to_builtins(binding)


def to_bundle(record: ScriptRecord, bundle_dir: str, package_dirs: list[str] | None = None,
              main_code: messages.MainCode | None = None) -> messages.ScriptBundle:
    """The child's view of a script: where its files are, plus the bindings a child can hold.

    ``bundle_dir`` holds the record's modules as files (supervisor.pool.bundles);
    ``main_code``, if the supervisor holds it, is its main module's, read from there.

    Secrets become text bindings only inside the script's own child; the
    outbound configuration of a dispatch-namespace binding and a service
    binding's target stay in the supervisor (the child only names the
    binding in its calls, and the supervisor resolves it). Storage
    bindings (``BROKERED``) reach the child as a name and a type: their
    ids, and so the data behind them, stay here too.
    """
    bindings: list[messages.Binding] = []
    for binding in record.bindings:
        if isinstance(binding, (PlainText, SecretText)):
            bindings.append(messages.TextBinding(binding.name, binding.text))
        elif isinstance(binding, Json):
            bindings.append(messages.JsonBinding(binding.name, binding.json))
        elif isinstance(binding, VersionMetadata):
            bindings.append(messages.JsonBinding(binding.name, {
                "id": record.version_id, "tag": record.version_tag, "timestamp": record.version_created_on}))
        elif isinstance(binding, DispatchNamespace):
            bindings.append(messages.DispatchNamespaceBinding(binding.name, binding.namespace))
        elif isinstance(binding, Service):
            bindings.append(messages.ServiceBinding(binding.name, ""))
        elif isinstance(binding, BROKERED):
            kind = type(binding).__struct_config__.tag  # type: ignore[attr-defined]
            bindings.append(messages.BrokeredBinding(binding.name, kind))
        elif isinstance(binding, Assets):
            bindings.append(messages.AssetsBinding(binding.name))
    return messages.ScriptBundle(
        namespace=record.namespace,
        name=record.name,
        version=record.version,
        main_module=record.main_module,
        bundle=bundle_dir,
        bindings=bindings,
        compatibility_date=record.compatibility_date,
        package_dirs=list(package_dirs or []),
        main_code=main_code,
        compatibility_flags=list(record.compatibility_flags),
    )
