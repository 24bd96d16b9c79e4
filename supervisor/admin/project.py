"""Reading a worker project from disk for ``corral deploy``.

A project is either a single ``.py`` file (the main module) or a folder with
``corral.toml`` or a Wrangler config (``wrangler.toml``, ``wrangler.json``,
``wrangler.jsonc``) as Cloudflare's Python Workers projects have it, so an
existing project deploys unchanged. The config names ``main``, the
compatibility date, ``[vars]`` and bindings; every ``.py`` file under the
folder is uploaded under its path relative to the folder (with the text and
data files Wrangler's default module rules take beside the main module:
:data:`DEFAULT_RULES`, and those of the config's ``rules``), and the sandbox
treats the main module's folder as the import root (``main =
"src/entry.py"`` makes ``src/`` the root).

Pure: a path in, a :class:`Project` out (typed upload metadata,
:class:`supervisor.model.UploadMetadata`), or a :class:`ProjectError` that
says what to fix. No network.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any

import msgspec

from supervisor import model
from supervisor.compat_flags import KNOWN_FLAGS as CLOUDFLARE_FLAGS
from supervisor.errors import Invalid

__all__ = ["CONFIG_FILES", "Project", "ProjectError", "load_project", "module_content_type",
           "strip_jsonc"]

#: The config files a folder may have, the first found wins: Corral's own,
#: then wrangler's in wrangler's order (findWranglerConfig: json, jsonc,
#: toml), so that a stale wrangler.toml beside a newer wrangler.jsonc is not
#: the one deployed.
CONFIG_FILES = ("corral.toml", "wrangler.json", "wrangler.jsonc", "wrangler.toml")
_SKIP_DIRS = {"__pycache__", "node_modules", ".venv", "venv"}
#: pywrangler's vendored packages, beside pyproject.toml (see supervisor.admin.vendored_packages).
_VENDORED_DIR = "python_modules"
#: Modules the sandbox provides, which a bundle may not have (sandbox.loader.RESERVED).
_RUNTIME_NAMES = frozenset({"workers", "js", "pyodide"})
MAX_FILES = 1000
#: What a project uploads besides its ``.py`` files: files under the main
#: module's folder that its config's ``rules`` take, then Wrangler's default
#: module rules (those of a type no rule of the config ends with
#: ``fallthrough: false``), so code can open a template or a query file beside
#: it, as on Cloudflare.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Text", ("**/*.txt", "**/*.html", "**/*.sql")),
    ("Data", ("**/*.bin",)),
    ("CompiledWasm", ("**/*.wasm", "**/*.wasm?module")),
)
#: Module rule types a Python worker can use.
RULE_TYPES = ("PythonModule", "Text", "Data", "CompiledWasm")
#: The Content-Type a module goes up with, by extension (others: Data).
MODULE_TYPES = {
    ".py": "text/x-python",
    ".txt": "text/plain", ".html": "text/plain", ".sql": "text/plain",
    ".bin": "application/octet-stream",
    ".wasm": "application/wasm",
}
#: Files at a project's top that are its set-up, not modules.
_NOT_MODULES = {"requirements.txt"}


class ProjectError(ValueError):
    """The project cannot be deployed as it is; the message says why."""


class Project(msgspec.Struct, kw_only=True):
    main_module: str
    modules: dict[str, bytes]
    metadata: model.UploadMetadata
    #: ``pyproject.toml``'s ``[project] dependencies`` (or ``requirements.txt``),
    #: normalised; sent as ``text/x-python-requirement`` parts.
    requirements: list[str] = []
    #: Static assets by URL path (``/index.html``), from the config's ``assets.directory``.
    assets: dict[str, bytes] = {}
    #: Things worth saying that do not stop the deploy (unknown flags or keys,
    #: the SDK dropped from the requirements, requires-python ignored).
    warnings: list[str] = []
    #: The config's HTTP pull consumers (``type = "http_pull"``), not the script's own.
    pull_consumers: list[PullConsumer] = []
    #: Whether the config says what the crons are (``triggers``, even empty).
    #: Without it the deployed ones stay, as wrangler leaves schedules alone
    #: when ``triggers`` is not defined (``crons = []`` removes them).
    declares_crons: bool = False


# -- config shapes ------------------------------------------------------------


class _KV(msgspec.Struct):
    binding: str
    id: str
    preview_id: str | None = None


class _D1(msgspec.Struct):
    binding: str
    database_id: str
    database_name: str = ""
    preview_database_id: str | None = None
    migrations_dir: str = "migrations"
    migrations_table: str = "d1_migrations"


class _R2(msgspec.Struct):
    binding: str
    bucket_name: str
    preview_bucket_name: str | None = None
    jurisdiction: str | None = None


class _Outbound(msgspec.Struct):
    service: str
    parameters: list[str] = []
    environment: str | None = None


class _Dispatch(msgspec.Struct):
    binding: str
    namespace: str
    outbound: _Outbound | None = None


class _Service(msgspec.Struct):
    binding: str
    service: str
    environment: str | None = None
    entrypoint: str | None = None
    props: dict[str, Any] | None = None


class _TailConsumer(msgspec.Struct, omit_defaults=True):
    service: str
    environment: str | None = None


class _DurableObjectBinding(msgspec.Struct):
    name: str
    class_name: str
    script_name: str | None = None
    environment: str | None = None


class _DurableObjects(msgspec.Struct):
    bindings: list[_DurableObjectBinding] = []


class _QueueProducer(msgspec.Struct):
    binding: str
    queue: str
    delivery_delay: int | None = None


class _QueueConsumer(msgspec.Struct):
    queue: str
    max_batch_size: int = 10
    max_batch_timeout: float = 5.0
    max_retries: int = 3
    dead_letter_queue: str | None = None
    retry_delay: int = 0
    max_concurrency: int | None = None
    #: ``"worker"`` (the default: this script consumes) or ``"http_pull"``
    #: (the queue's messages are pulled over HTTP; the script consumes nothing).
    type: str | None = None
    visibility_timeout_ms: int | None = None


class PullConsumer(msgspec.Struct, kw_only=True):
    """A queue's HTTP pull consumer, as the config declares it: ``corral
    deploy`` sets it through the queues API, as wrangler does."""

    queue: str
    settings: dict[str, Any]
    dead_letter_queue: str | None = None


class _Queues(msgspec.Struct):
    producers: list[_QueueProducer] = []
    consumers: list[_QueueConsumer] = []


class _Rule(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    globs: list[str]
    fallthrough: bool = False


class _WorkerLoader(msgspec.Struct):
    binding: str


class _VersionMetadata(msgspec.Struct):
    binding: str


class _RateLimitSimple(msgspec.Struct):
    limit: float
    period: int
    mitigation_timeout: int = 0


class _RateLimit(msgspec.Struct):
    name: str
    namespace_id: str | int
    simple: _RateLimitSimple


class _Triggers(msgspec.Struct):
    crons: list[str] = []


class _Limits(msgspec.Struct, forbid_unknown_fields=True):
    """``limits``: the Worker's own CPU time and subrequests per invocation."""

    cpu_ms: int | None = None
    subrequests: int | None = None


class _Build(msgspec.Struct):
    """``build``: Wrangler runs ``command`` before it deploys; Corral does not
    run the project's code on deploy, but says so when the folder it would
    make (Django's ``collectstatic`` into ``assets.directory``) is missing."""

    command: str | None = None
    cwd: str | None = None


class _Assets(msgspec.Struct, forbid_unknown_fields=True):
    directory: str | None = None
    binding: str | None = None
    run_worker_first: bool | list[str] = False
    html_handling: model.HtmlHandling = "auto-trailing-slash"
    not_found_handling: model.NotFoundHandling = "none"


class _PythonModules(msgspec.Struct):
    """``python_modules``: what of the project's ``python_modules/`` wrangler
    leaves out (globs relative to it; wrangler's default skips bytecode)."""

    exclude: list[str] = msgspec.field(default_factory=lambda: ["**/*.pyc"])


class WranglerConfig(msgspec.Struct):
    """The subset of a Wrangler config Corral uses; see :data:`UNSUPPORTED_KEYS`."""

    main: str | None = None
    compatibility_date: str | None = None
    build: _Build | None = None
    compatibility_flags: list[str] = []
    triggers: _Triggers | None = None
    limits: _Limits | None = None
    assets: _Assets | None = None
    vars: dict[str, Any] = {}
    kv_namespaces: list[_KV] = []
    d1_databases: list[_D1] = []
    r2_buckets: list[_R2] = []
    dispatch_namespaces: list[_Dispatch] = []
    services: list[_Service] = []
    tail_consumers: list[_TailConsumer] = []
    durable_objects: _DurableObjects | None = None
    migrations: list[Any] = []
    queues: _Queues | None = None
    worker_loaders: list[_WorkerLoader] = []
    ratelimits: list[_RateLimit] = []
    version_metadata: _VersionMetadata | None = None
    rules: list[_Rule] = []
    python_modules: _PythonModules | None = None
    #: Wrangler names modules from this folder; Corral from the main module's (said, not silent).
    base_dir: str | None = None


class CorralConfig(WranglerConfig, forbid_unknown_fields=True):
    """``corral.toml``: Wrangler's keys (plus ``name``, ``tags``), strictly checked so typos fail."""

    name: str | None = None
    tags: list[str] = []


#: Wrangler keys that change what a worker is or does, which Corral cannot honour
#: yet: deploying without them would run a different worker, so it is an error.
UNSUPPORTED_KEYS = frozenset({
    "workflows", "ai", "vectorize", "hyperdrive",
    "analytics_engine_datasets", "browser", "mtls_certificates", "send_email", "unsafe",
    "containers", "images", "secrets_store_secrets",
    "pipelines", "wasm_modules", "text_blobs", "data_blobs", "site",
    "unsafe_hello_world", "dispatch_namespaces_outbound", "logfwdr", "tail_consumers_streaming",
})
#: The Cloudflare product behind an unsupported key, for its error.
_PRODUCTS = {
    "workflows": "Workflows", "ai": "Workers AI", "vectorize": "Vectorize", "hyperdrive": "Hyperdrive",
    "analytics_engine_datasets": "Workers Analytics Engine", "browser": "Browser Rendering",
    "mtls_certificates": "mTLS certificates", "send_email": "Email Workers", "containers": "Containers",
    "images": "Images", "secrets_store_secrets": "Secrets Store", "pipelines": "Pipelines",
}
#: Keys about deployment to Cloudflare itself (accounts, routes, dev server,
#: build): meaningless for Corral, silently ignored.
IGNORED_KEYS = frozenset({
    "$schema", "name", "account_id", "workers_dev", "preview_urls", "routes", "route",
    "observability", "dev", "build", "minify", "keep_vars", "send_metrics", "upload_source_maps",
    "placement", "logpush", "no_bundle", "find_additional_modules",
    "preserve_file_names", "node_compat", "usage_model", "keep_names",
    "legacy_env", "compliance_region", "tsconfig", "jsx_factory", "jsx_fragment",
})
#: What a Wrangler environment (``[env.NAME]``, ``corral deploy --env NAME``)
#: does not take from the top level, as in Wrangler: vars and bindings must
#: be given again in the environment; everything else is inherited.
NON_INHERITABLE_KEYS = frozenset({
    "define", "vars", "secrets", "durable_objects", "workflows", "cloudchamber", "containers",
    "kv_namespaces", "send_email", "queues", "connect", "r2_buckets", "d1_databases", "vectorize",
    "ai_search_namespaces", "ai_search", "agent_memory", "websearch", "hyperdrive", "services",
    "analytics_engine_datasets", "browser", "ai", "images", "media", "stream", "unsafe",
    "mtls_certificates", "tail_consumers", "streaming_tail_consumers", "dispatch_namespaces",
    "pipelines", "secrets_store_secrets", "artifacts", "unsafe_hello_world", "flagship",
    "ratelimits", "worker_loaders", "vpc_services", "vpc_networks", "version_metadata", "logfwdr",
})
#: Compatibility flags Corral knows (stored with every script; others are warned about).
KNOWN_FLAGS = frozenset({
    "python_workers", "python_workers_20250116", "python_no_global_handlers",
    "disable_python_no_global_handlers", "python_workflows", "python_dedicated_snapshot",
    "python_workers_durable_objects", "python_external_packages", "nodejs_compat",
    "nodejs_compat_v2", "nodejs_als", "global_fetch_strictly_public", "streams_enable_constructors",
    "transformstream_enable_standard_constructor", "python_workflows_implicit_dependencies",
    "enable_python_external_sdk", "rpc", "fetch_refuses_unknown_protocols",
    "brotli_content_encoding", "no_brotli_content_encoding", "strip_bom_in_read_all_text",
    "do_not_strip_bom_in_read_all_text",
})
_KNOWN_KEYS = frozenset(WranglerConfig.__struct_fields__) | IGNORED_KEYS | {"tags"}


# -- JSONC ----------------------------------------------------------------------


def _outside_strings(text: str, step: Any) -> str:
    """Copy ``text``, letting ``step(text, i)`` rewrite code outside JSON strings.

    ``step`` returns ``(replacement, next_index)`` or None to copy one character.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
            continue
        changed = step(text, i)
        if changed is None:
            out.append(text[i])
            i += 1
        else:
            out.append(changed[0])
            i = changed[1]
    return "".join(out)


def _blank(text: str) -> str:
    """``text`` as whitespace of the same length in UTF-8, its line breaks kept:
    a parse error's byte offset then points into the config as written."""
    return "".join(c if c == "\n" else " " * len(c.encode()) for c in text)


def _comment(text: str, i: int) -> tuple[str, int] | None:
    if text.startswith("//", i):
        j = text.find("\n", i)
        end = len(text) if j == -1 else j
        return _blank(text[i:end]), end
    if text.startswith("/*", i):
        j = text.find("*/", i + 2)
        if j == -1:
            line = text.count("\n", 0, i) + 1
            raise ProjectError(f"unterminated /* comment in JSONC config (line {line})")
        return _blank(text[i:j + 2]), j + 2
    return None


def _trailing_comma(text: str, i: int) -> tuple[str, int] | None:
    if text[i] != ",":
        return None
    j = i + 1
    while j < len(text) and text[j] in " \t\r\n":
        j += 1
    return (" ", i + 1) if j < len(text) and text[j] in "]}" else None


def strip_jsonc(text: str) -> str:
    """JSONC to JSON: blank out ``//`` and ``/* */`` comments, then trailing
    commas (outside strings), keeping every byte's place."""
    return _outside_strings(_outside_strings(text, _comment), _trailing_comma)


_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")


def _where(message: str, raw: bytes) -> str:
    """A JSON parse error's ``(byte N)`` as the line and column it is at."""
    found = _BYTE_OFFSET.search(message)
    if found is None:
        return message
    offset = min(int(found.group(1)), len(raw))
    line = raw.count(b"\n", 0, offset) + 1
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return f"{message[:found.start()]}(line {line}, column {column}){message[found.end():]}"


# -- loading --------------------------------------------------------------------


def _environment(path: Path, data: dict[str, Any], env: str | None,
                 warnings: list[str] | None) -> dict[str, Any]:
    """The config as Wrangler reads it for ``--env``: the top level without
    its ``env`` table, or the named environment over the top level's
    inheritable keys (:data:`NON_INHERITABLE_KEYS` are the environment's own)."""
    envs = data.pop("env", None)
    if env is None:
        return data
    if not isinstance(envs, dict) or not isinstance(envs.get(env), dict):
        known = ", ".join(sorted(envs)) if isinstance(envs, dict) and envs else "none"
        raise ProjectError(f"{path}: no environment {env!r} ([env.{env}]); environments there: {known}")
    section = envs[env]
    merged = {k: v for k, v in data.items() if k not in NON_INHERITABLE_KEYS}
    if path.name != "corral.toml" and warnings is not None:
        for key in sorted(NON_INHERITABLE_KEYS & set(data) - set(section)):
            warnings.append(f"{path.name}: {key!r} is set at the top level but not in [env.{env}]; "
                            "environments do not inherit it (as in Wrangler), so it is left out")
    merged.update(section)
    return merged


def _read_config(path: Path, warnings: list[str] | None = None, env: str | None = None) -> WranglerConfig:
    kind = CorralConfig if path.name == "corral.toml" else WranglerConfig
    try:
        # A byte order mark (Windows editors write one) is not the config's: Wrangler strips it.
        raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
        if path.suffix == ".toml":
            data = msgspec.toml.decode(raw)
        else:
            # Wrangler reads comments and trailing commas in wrangler.json too.
            data = msgspec.json.decode(strip_jsonc(raw.decode("utf-8")))
        if isinstance(data, dict):
            data = _environment(path, data, env, warnings)
            _check_keys(path, data, warnings)
        return msgspec.convert(data, type=kind)
    except msgspec.DecodeError as exc:
        raise ProjectError(f"{path}: {_where(str(exc), raw) if path.suffix != '.toml' else exc}") from None
    except msgspec.ValidationError as exc:
        raise ProjectError(f"{path}: {exc}") from None
    except RecursionError:  # msgspec and TOML parsers recurse per nesting level
        raise ProjectError(f"{path}: nested too deeply to be a config") from None
    except UnicodeDecodeError:
        raise ProjectError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ProjectError(f"cannot read {path}: {exc.strerror}") from None


def _check_keys(path: Path, data: dict[str, Any], warnings: list[str] | None) -> None:
    """An unsupported key is an error naming it; an unknown one a warning."""
    for key in data:
        if key in UNSUPPORTED_KEYS:
            raise ProjectError(f"{path}: {key!r} is not supported by Corral yet{_unsupported(key, data[key])}; "
                               "remove it or deploy this worker elsewhere until it is")
        if key not in _KNOWN_KEYS and warnings is not None and path.name != "corral.toml":
            warnings.append(f"{path.name}: ignoring unknown key {key!r}")
    flags = data.get("compatibility_flags")
    if isinstance(flags, list) and warnings is not None:
        for flag in flags:
            # A flag Cloudflare does not know is refused at upload
            # (supervisor.model.check_compatibility_flags); one it knows that
            # Corral does not act on is stored, and said so.
            if isinstance(flag, str) and flag not in KNOWN_FLAGS and flag in CLOUDFLARE_FLAGS:
                warnings.append(f"{path.name}: compatibility flag {flag!r} has no effect in Corral "
                                "(stored with the script)")


def _unsupported(key: str, value: Any) -> str:
    """What an unsupported key is to the tenant, `` (Workers AI: env.AI)``:
    the Cloudflare product and the bindings its code would reach it by, so
    the error says which calls would have failed, not only which key."""
    entries = value if isinstance(value, list) else [value]
    names = [_reached_by(entry) for entry in entries if isinstance(entry, dict)]
    parts = [_PRODUCTS.get(key, ""), ", ".join(name for name in names if name)]
    detail = ": ".join(part for part in parts if part)
    return f" ({detail})" if detail else ""


def _reached_by(entry: dict[str, Any]) -> str:
    """``env.NAME`` for a binding's entry; ``class NAME`` for a container's
    (its code reaches it through a Durable Object class)."""
    for field, shown in (("binding", "env.{}"), ("name", "env.{}"), ("class_name", "class {}")):
        if isinstance(entry.get(field), str) and entry[field]:
            return shown.format(entry[field])
    return ""


def _contained(path: Path, root: Path | None, what: str) -> Path:
    """``path``'s real path, which must be under ``root`` (the project's real
    path; None: anywhere, as ``--allow-outside`` asks). A project is what lies
    under its folder: a symlink or an assets directory leading out of it
    would upload whatever the operator running the deploy can read."""
    real = Path(os.path.realpath(path))
    if root is not None and real != root and root not in real.parents:
        raise ProjectError(f"{what} {path} is outside the project {root} (it resolves to {real}); "
                           "pass --allow-outside to deploy files from outside the project")
    return real


def _rules_text(config_path: Path, name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProjectError(f"{config_path}: the assets directory's {name} is not UTF-8 text") from None


def _collect_assets(root: Path, config_path: Path, directory: str,
                    within: Path | None) -> dict[str, bytes]:
    """Every file under the assets directory, by URL path, but what ``.assetsignore``
    leaves out: gitignore's rules, as wrangler reads it (``docs/`` a folder,
    ``/top.txt`` only at the top, ``!keep.log`` back in); with fnmatch, folder
    patterns, anchors and negations did nothing, and files meant to stay
    private were served. ``within``: the project's real path, which every
    file must be under (None: anywhere)."""
    import pathspec

    folder = (root / directory).resolve()
    if not folder.is_dir():
        raise ProjectError(f"{config_path}: assets.directory {directory!r} is not a folder under {root}")
    _contained(folder, within, f"{config_path}: assets.directory")
    lines = ["/.assetsignore"]
    ignore_file = folder / ".assetsignore"
    if ignore_file.is_file():
        _contained(ignore_file, within, "the assets ignore file")
        lines += ignore_file.read_text(errors="replace").splitlines()
    try:
        ignored = pathspec.GitIgnoreSpec.from_lines(lines)
    except (ValueError, TypeError) as exc:  # pathspec's GitWildMatchPatternError is a ValueError
        raise ProjectError(f"{ignore_file}: {exc}") from None
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for filename in sorted(filenames):
            full = Path(dirpath, filename)
            rel = full.relative_to(folder).as_posix()
            if ignored.match_file(rel):
                continue
            if len(files) >= 20_000:
                raise ProjectError(f"{folder} has more than 20000 asset files")
            _contained(full, within, "asset file")
            try:
                files["/" + rel] = full.read_bytes()
            except OSError as exc:
                raise ProjectError(f"cannot read {full}: {exc.strerror}") from None
    return files


def _bindings(config: WranglerConfig) -> list[model.BindingSpec]:
    bindings: list[model.BindingSpec] = []
    bindings += [model.var_binding(name, value) for name, value in config.vars.items()]
    for kv in config.kv_namespaces:
        bindings.append(model.KvNamespace(name=kv.binding, namespace_id=kv.id))
    for d1 in config.d1_databases:
        bindings.append(model.D1(name=d1.binding, id=d1.database_id))
    for r2 in config.r2_buckets:
        bindings.append(model.R2Bucket(name=r2.binding, bucket_name=r2.bucket_name,
                                       jurisdiction=r2.jurisdiction or None))
    for dn in config.dispatch_namespaces:
        outbound = None
        if dn.outbound is not None:
            outbound = model.Outbound(
                worker=model.OutboundWorker(service=dn.outbound.service,
                                            environment=dn.outbound.environment or None),
                params=[model.OutboundParam(name=p) for p in dn.outbound.parameters])
        bindings.append(model.DispatchNamespace(name=dn.binding, namespace=dn.namespace,
                                                outbound=outbound))
    if config.assets is not None and config.assets.binding:
        bindings.append(model.Assets(name=config.assets.binding))
    for svc in config.services:
        bindings.append(model.Service(name=svc.binding, service=svc.service,
                                      environment=svc.environment or None,
                                      entrypoint=svc.entrypoint or None, props=svc.props))
    for do in config.durable_objects.bindings if config.durable_objects else []:
        bindings.append(model.DurableObjectNamespace(name=do.name, class_name=do.class_name,
                                                     script_name=do.script_name or None,
                                                     environment=do.environment or None))
    for loader in config.worker_loaders:
        bindings.append(model.WorkerLoader(name=loader.binding))
    for producer in config.queues.producers if config.queues else []:
        bindings.append(model.Queue(name=producer.binding, queue_name=producer.queue,
                                    delivery_delay=producer.delivery_delay))
    if config.version_metadata is not None:
        bindings.append(model.VersionMetadata(name=config.version_metadata.binding))
    for rate in config.ratelimits:
        bindings.append(model.RateLimit(
            name=rate.name, namespace_id=str(rate.namespace_id),
            simple=model.RateLimitSimple(limit=rate.simple.limit, period=rate.simple.period,  # type: ignore[arg-type]
                                         mitigation_timeout=rate.simple.mitigation_timeout)))
    return bindings


def module_content_type(path: str) -> str:
    """The multipart Content-Type a module of the bundle is uploaded with, by its extension
    (Cloudflare's: Python modules, Text modules, Data modules, WebAssembly)."""
    return MODULE_TYPES.get(posixpath.splitext(path)[1].lower(), "application/octet-stream")


def _glob(pattern: str) -> re.Pattern[str]:
    """A module rule's glob, relative to the main module's folder: ``**/`` is
    any folders (none included), ``*`` and ``?`` stay within one name."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            c = pattern[i]
            out.append("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c))
            i += 1
    return re.compile("".join(out))


def _effective_rules(rules: list[_Rule], config_path: Path) -> list[re.Pattern[str]]:
    """The globs that take a file, the config's rules first, as Wrangler
    applies them: after a rule with ``fallthrough: false``, no later rule of
    its type counts, the default ones included."""
    globs: list[re.Pattern[str]] = []
    closed: set[str] = set()
    for rule in [*rules, *(_Rule(type=t, globs=list(g), fallthrough=True) for t, g in DEFAULT_RULES)]:
        if rule.type not in RULE_TYPES:
            raise ProjectError(f"{config_path}: rules: type {rule.type!r} is not supported by Corral "
                               f"(a Python worker takes {', '.join(RULE_TYPES)})")
        if rule.type in closed:
            continue
        globs += [_glob(g.removesuffix("?module")) for g in rule.globs]
        if not rule.fallthrough:
            closed.add(rule.type)
    return globs


def _collect_modules(root: Path, base: str, skip: Path | None,
                     globs: list[re.Pattern[str]], within: Path | None) -> dict[str, bytes]:
    """Every ``.py`` under ``root``, and the files under ``base`` (the main
    module's folder) that a module rule's glob takes, by relative POSIX path;
    skips caches, venvs, hidden dirs, ``skip`` (the assets directory) and
    the project's ``python_modules`` (pywrangler's Pyodide builds of the
    pyproject.toml dependencies, which the supervisor installs for its own
    CPython instead). ``within``: the project's real path, which every
    file's real path must be under (None: anywhere). Symlinked folders are
    not followed (os.walk)."""
    modules: dict[str, bytes] = {}
    top = root.resolve()
    base_dir = (root / base).resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath).resolve()
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")
                             and (skip is None or (here / d) != skip)
                             and not (here == top and d == _VENDORED_DIR))
        in_base = here == base_dir or base_dir in here.parents
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            if not filename.endswith(".py"):
                if not in_base or (here == top and filename in _NOT_MODULES):
                    continue
                inside = (here / filename).relative_to(base_dir).as_posix()
                if not any(g.fullmatch(inside) for g in globs):
                    continue
            full = Path(dirpath, filename)
            rel = full.relative_to(root).as_posix()
            if len(modules) >= MAX_FILES:
                raise ProjectError(f"{root} has more than {MAX_FILES} module files; is it the right folder?")
            _contained(full, within, "module file")
            try:
                modules[rel] = full.read_bytes()
            except OSError as exc:
                raise ProjectError(f"cannot read {full}: {exc.strerror}") from None
    return modules


def _made_by_pywrangler(vendored: Path) -> bool:
    """Whether ``python_modules/`` is ``pywrangler sync``'s: a venv's
    site-packages (installed distributions, the ``pyvenv.cfg`` it marks the
    copy with). Sync replaces the whole folder, so such a folder holds
    nothing vendored by hand."""
    return (vendored / "pyvenv.cfg").exists() or any(vendored.glob("*.dist-info"))


def _top_name(path: str) -> str:
    """The importable name a module path starts: ``mod`` for ``mod.py`` and ``mod/x.py``."""
    return path.split("/", 1)[0].removesuffix(".py")


def _loose_vendored(root: Path, base: str, modules: dict[str, bytes], config: _PythonModules,
                    within: Path | None, warnings: list[str]) -> dict[str, bytes]:
    """The ``.py`` files of a ``python_modules/`` vendored by hand (not
    pywrangler's packages, which the pyproject.toml dependencies replace),
    as modules beside the main module.

    On Cloudflare, wrangler uploads ``python_modules/`` as it is (but for
    ``python_modules.exclude``) and workerd puts it on ``sys.path`` after the
    main module's folder, so ``import mod`` finds ``python_modules/mod.py``
    unless the project has a ``mod`` of its own. The import root is that
    folder here, so a loose module goes up there; one the project already
    has is left out (the project's own wins, as on Cloudflare), with a
    warning, as is one of the runtime's names (``workers``, ``js``, ``pyodide``)."""
    if base and (root / base / _VENDORED_DIR).exists():
        raise ProjectError(f"{root / base / _VENDORED_DIR}: python_modules belongs beside the config "
                           f"({root / _VENDORED_DIR}), not in the main module's folder (wrangler "
                           "refuses it there too)")
    vendored = root / _VENDORED_DIR
    if not vendored.is_dir() or vendored.is_symlink() or _made_by_pywrangler(vendored):
        return {}
    prefix = f"{base}/" if base else ""
    own_names = {_top_name(m[len(prefix):]) for m in modules if m.startswith(prefix)}
    own_names.update(_RUNTIME_NAMES)
    excluded = [_glob(g) for g in config.exclude]
    found: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(vendored):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for filename in sorted(f for f in filenames if f.endswith(".py")):
            inside = Path(dirpath, filename).relative_to(vendored).as_posix()
            if any(g.fullmatch(inside) for g in excluded):
                continue
            target = prefix + inside
            if _top_name(inside) in own_names:
                first = "the runtime's" if _top_name(inside) in _RUNTIME_NAMES else "the project's own"
                warnings.append(f"{_VENDORED_DIR}/{inside} is left out: {first} "
                                f"{_top_name(inside)} is imported first")
                continue
            _contained(Path(dirpath, filename), within, "module file")
            try:
                found[target] = Path(dirpath, filename).read_bytes()
            except OSError as exc:
                raise ProjectError(f"cannot read {Path(dirpath, filename)}: {exc.strerror}") from None
    if len(modules) + len(found) > MAX_FILES:
        raise ProjectError(f"{root} has more than {MAX_FILES} module files; is it the right folder?")
    return found


#: The folder SPEC section 1 names: "a folder's ... ``assets`` directory travel[s] with it".
DEFAULT_ASSETS_DIR = "assets"


def _default_assets(config: WranglerConfig, root: Path) -> WranglerConfig:
    """A ``corral.toml`` without an ``[assets]`` table, in a folder with an
    ``assets`` directory: that directory is its static assets, as SPEC says
    a folder's ``assets`` directory travels with it (without this its
    ``.txt`` and ``.html`` files went up as text modules and nothing was
    served). Not when it holds ``.py`` files: then it is a package the
    worker imports. A symlink is not searched: taken as the assets
    directory, it meets the same containment check as a configured one
    (one leading out of the project is refused by name). A Wrangler config
    keeps Cloudflare's rule: assets only where ``assets.directory`` names them."""
    folder = root / DEFAULT_ASSETS_DIR
    if not isinstance(config, CorralConfig) or config.assets is not None or not folder.is_dir():
        return config
    if not folder.is_symlink() and any(name.endswith(".py") for _, _, names in os.walk(folder) for name in names):
        return config
    return msgspec.structs.replace(config, assets=_Assets(directory=DEFAULT_ASSETS_DIR))


def load_project(path: str | os.PathLike[str], env: str | None = None,
                 allow_outside: bool = False) -> Project:
    """Read a ``.py`` file or a project folder into upload-ready modules and
    metadata; ``env`` picks a Wrangler environment of its config.

    A folder's files must really be in it: a module, asset, config or
    requirements file whose real path (symlinks followed) is outside the
    folder, or an ``assets.directory`` outside it, is refused by name, unless
    ``allow_outside`` (``corral deploy --allow-outside``, for an operator's
    own projects). Wrangler allows both (it resolves ``assets.directory``
    from the config's folder without a check and follows symlinks), but a
    platform deploys projects its tenants wrote: a symlink to an operator's
    file would be uploaded and served. Symlinks that stay in the folder are
    fine."""
    target = Path(path)
    if target.is_file():
        if target.suffix != ".py":
            raise ProjectError(f"{target} is not a .py file; pass a .py file or a project folder")
        try:
            code = target.read_bytes()
        except OSError as exc:
            raise ProjectError(f"cannot read {target}: {exc.strerror}") from None
        return Project(main_module=target.name, modules={target.name: code},
                       metadata=model.UploadMetadata(main_module=target.name))
    if not target.is_dir():
        raise ProjectError(f"{target} does not exist")
    config_path = next((target / name for name in CONFIG_FILES if (target / name).is_file()), None)
    if config_path is None:
        raise ProjectError(
            f"{target} has no {', '.join(CONFIG_FILES)}; add one naming main "
            "(e.g. main = \"src/entry.py\") or pass the main .py file itself"
        )
    within = None if allow_outside else target.resolve()
    _contained(config_path, within, "config file")
    warnings: list[str] = []
    config = _read_config(config_path, warnings, env)
    config = _default_assets(config, target)
    if not config.main:
        raise ProjectError(f"{config_path} does not name the main module: add main = \"src/entry.py\"")
    main = posixpath.normpath(config.main.replace("\\", "/"))
    if main.startswith(("/", "../")) or main == "..":
        raise ProjectError(f"{config_path}: main {config.main!r} must be a path inside {target}")
    if not main.endswith(".py"):
        raise ProjectError(f"{config_path}: main {config.main!r} must be a .py file")
    assets_dir = (target / config.assets.directory).resolve() if config.assets and config.assets.directory else None
    modules = _collect_modules(target, posixpath.dirname(main), assets_dir,
                               _effective_rules(config.rules, config_path), within)
    if main not in modules:
        raise ProjectError(f"{config_path}: main {config.main!r} not found under {target}")
    modules.update(_loose_vendored(target, posixpath.dirname(main), modules,
                                   config.python_modules or _PythonModules(), within, warnings))
    assets: dict[str, bytes] = {}
    upload_assets = None
    if config.assets is not None:
        if config.assets.binding and not config.assets.directory:
            raise ProjectError(f"{config_path}: assets.binding {config.assets.binding!r} needs assets.directory, "
                               "the folder of the files it serves (as wrangler requires)")
        rules = {"_redirects": "", "_headers": ""}
        if config.assets.directory:
            try:
                assets = _collect_assets(target, config_path, config.assets.directory, within)
            except ProjectError as exc:
                if config.build is None or not config.build.command or \
                        (target / config.assets.directory).exists():
                    raise
                where = f" in {config.build.cwd}" if config.build.cwd else ""
                raise ProjectError(f"{exc}: its build command makes it, which wrangler runs before "
                                   f"deploying and corral deploy does not; run it first{where}: "
                                   f"{config.build.command}") from None
            for name in rules:  # the site's rules, sent in the config as Wrangler sends them
                data = assets.pop("/" + name, None)
                if data is not None:
                    rules[name] = _rules_text(config_path, name, data)
        upload_assets = model.UploadAssets(config=model.AssetConfig(
            html_handling=config.assets.html_handling,
            not_found_handling=config.assets.not_found_handling,
            run_worker_first=config.assets.run_worker_first,
            redirects=rules["_redirects"], headers=rules["_headers"]))
    consumers = config.queues.consumers if config.queues else []
    for consumer in consumers:
        if consumer.type not in (None, "worker", "http_pull"):
            raise ProjectError(f"{config_path}: queues.consumers: type {consumer.type!r} is not one of "
                               "'worker' or 'http_pull'")
    pulls = [PullConsumer(queue=c.queue, dead_letter_queue=c.dead_letter_queue, settings={
        k: v for k, v in (("batch_size", c.max_batch_size), ("max_retries", c.max_retries),
                          ("visibility_timeout_ms", c.visibility_timeout_ms), ("retry_delay", c.retry_delay))
        if v is not None}) for c in consumers if _pulled(c)]
    try:
        metadata = model.UploadMetadata(
            main_module=main,
            compatibility_flags=list(config.compatibility_flags),
            crons=list(config.triggers.crons) if config.triggers else [],
            assets=upload_assets if assets else None,
            bindings=_bindings(config),
            compatibility_date=config.compatibility_date or "",
            tail_consumers=[model.TailConsumer(**msgspec.structs.asdict(t)) for t in config.tail_consumers],
            tags=list(config.tags) if isinstance(config, CorralConfig) and config.tags else None,
            migrations=list(config.migrations) or None,
            limits=model.ScriptLimits(cpu_ms=config.limits.cpu_ms, subrequests=config.limits.subrequests)
            if config.limits is not None and (config.limits.cpu_ms or config.limits.subrequests) else None,
            queue_consumers=[model.QueueConsumer(**_push_fields(c)) for c in consumers if not _pulled(c)],
        )
        # The same checks the admin API makes, so a bad config fails here, by name.
        model.decode_metadata(msgspec.to_builtins(metadata))
    except (Invalid, TypeError, ValueError) as exc:
        raise ProjectError(f"{config_path}: {exc}") from None
    from supervisor.cron import CronError, parse_cron
    for cron in metadata.crons:
        try:
            parse_cron(cron)
        except CronError as exc:
            raise ProjectError(f"{config_path}: triggers.crons: {exc}") from None
    if config.build is not None and config.build.command:
        where = f" (in {config.build.cwd})" if config.build.cwd else ""
        warnings.append(f"{config_path.name}: build.command is not run by corral deploy, as wrangler runs it "
                        f"before deploying: run it first{where}: {config.build.command}")
    if config.base_dir and posixpath.normpath(config.base_dir) != posixpath.dirname(main):
        warnings.append(f"{config_path.name}: base_dir {config.base_dir!r} is not honoured: the modules are "
                        f"imported from the main module's folder ({posixpath.dirname(main) or '.'}/)")
    requirements, req_warnings = _requirements(target, within)
    return Project(main_module=main, modules=modules, metadata=metadata, assets=assets,
                   requirements=requirements, warnings=[*warnings, *req_warnings],
                   declares_crons=config.triggers is not None, pull_consumers=pulls)


def _pulled(consumer: _QueueConsumer) -> bool:
    return consumer.type == "http_pull"


def _push_fields(consumer: _QueueConsumer) -> dict[str, Any]:
    """A worker consumer's fields (the model's; ``type`` and the pull ones are the config's)."""
    fields = msgspec.structs.asdict(consumer)
    del fields["type"], fields["visibility_timeout_ms"]
    return fields


def _requirements(root: Path, within: Path | None = None) -> tuple[list[str], list[str]]:
    """The folder's dependencies: ``pyproject.toml`` first (as Cloudflare's
    Python Workers projects declare them), else ``requirements.txt``."""
    from supervisor.packages.requirements import from_pyproject, from_requirements_txt

    for name, parse in (("pyproject.toml", from_pyproject), ("requirements.txt", from_requirements_txt)):
        path = root / name
        if not path.is_file():
            continue
        _contained(path, within, "requirements file")
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProjectError(f"cannot read {path}: {exc}") from None
        if name == "pyproject.toml" and "dependencies" not in text:
            continue  # a pyproject.toml for tools only; requirements.txt may still list them
        try:
            parsed = parse(text)
        except Invalid as exc:
            raise ProjectError(f"{path}: {exc}") from None
        warnings = list(parsed.warnings)
        if name == "pyproject.toml" and (root / "requirements.txt").is_file():
            warnings.append(f"{root / 'requirements.txt'} is ignored: the dependencies are pyproject.toml's "
                            "(as Cloudflare's Python Workers tooling reads them); move them there")
        return parsed.requirements, warnings
    return [], []
