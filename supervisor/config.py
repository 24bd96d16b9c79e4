"""Configuration of ``corral serve``: one msgspec Struct tree, read from TOML.

Every knob has a default that works on a small host; a config file
(``--config corral.toml``) overrides them, and command-line flags override the
file. Unknown keys are an error, so a typo never silently does nothing.
"""

from __future__ import annotations

import ipaddress
import math
import os
import stat
from typing import Annotated, Literal

import msgspec

# Constraints checked once, as the file is read: a negative size, count or
# duration is never meant, and msgspec's error names the field ("Expected
# `int` >= 0 - at `$.pool.spares`"), where the value would otherwise fail
# far from the file, or quietly do something odd.
Count = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(gt=0)]
Duration = Annotated[float, msgspec.Meta(ge=0)]
PositiveDuration = Annotated[float, msgspec.Meta(gt=0)]
#: sizeof(sockaddr_un.sun_path), less its terminating NUL.
MAX_UNIX_PATH = 107


class HttpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Ingress HTTP limits and timeouts."""

    max_header_bytes: Positive = 32 * 1024
    max_body_bytes: Count = 100 * 1024 * 1024
    header_timeout_s: PositiveDuration = 10.0
    #: How long each read of a request body waits for more of it: a client
    #: that stalls mid-body is answered 408, not left to run the worker into
    #: its wall-time limit (a 503 that blamed the tenant).
    body_timeout_s: PositiveDuration = 30.0
    idle_timeout_s: PositiveDuration = 60.0
    max_connections: Positive = 10_000


class PoolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The warm pool of jailed children."""

    #: Spares kept at least; while cold starts come faster than one a second,
    #: as many as arrive while a replacement is forked, up to ``max_spares``.
    spares: Count = 8
    max_spares: Count = 64
    max_children: Positive = 4000
    idle_timeout_s: PositiveDuration = 120.0
    #: A warm child idle this long gives back the pages it copied from its
    #: zygote but left as they were (see sandbox.reshare); its next request
    #: copies what it touches again (~1 ms, measured). A new spare gives
    #: back what its own set-up copied once it is ready. 0: never.
    reshare_after_s: Duration = 5.0
    #: Memory cap of every child, and the ceiling of a per-invocation memoryMb.
    memory_mb: Positive = 128
    #: How memory limits are enforced (see supervisor.limits.memory): "auto"
    #: picks a per-child cgroup (v2, then v1) where the host delegates one,
    #: else prlimit(); "cgroup" or "prlimit" insist on one (start fails if
    #: this host cannot give it).
    memory_enforcement: Literal["auto", "cgroup", "prlimit"] = "auto"
    #: A zygote is replaced after this long, or after forking this many
    #: children, whichever comes first: its children share its hash seed.
    zygote_max_age_s: PositiveDuration = 3600.0
    zygote_max_children: Positive = 1000
    #: Package zygotes (one per dependency set in use, with the set imported):
    #: spares each keeps, how many may live, and their own memory together.
    package_spares: Count = 1
    package_max_spares: Count = 4
    package_zygotes: Count = 8
    package_zygotes_memory_mb: Count = 1024
    #: A core to the supervisor's event loop alone while it is the busy hub
    #: of warm traffic (see supervisor.pool.hub_core): "auto" takes it while
    #: the loop is busy and no cold starts come, "on" whenever there are two
    #: cores or more, "off" never.
    hub_core: Literal["auto", "on", "off"] = "auto"


class LimitDefaults(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Defaults for one namespace or tag; unset fields fall through."""

    cpu_ms: PositiveDuration | None = None
    sub_requests: Count | None = None
    wall_ms: PositiveDuration | None = None
    memory_mb: Positive | None = None


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-invocation limits: platform defaults and ceilings (see supervisor.limits.policy)."""

    cpu_ms: PositiveDuration = 30_000.0
    sub_requests: Count = 1000
    wall_ms: PositiveDuration = 60_000.0
    memory_mb: Positive = 128
    #: Outbound connections one invocation may hold open at once (its
    #: ``fetch()`` calls from request to the end of the response body); more
    #: wait in line (Cloudflare: 6; see supervisor.limits.open_connections).
    open_connections: Positive = 6
    #: Outbound connections all of one script's invocations may hold open
    #: together; more wait. 0: a sixteenth of the supervisor's open-file
    #: limit, at least 64 (one tenant cannot take every tenant's descriptors).
    script_open_connections: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: How long ``waitUntil`` work may run after the response (Cloudflare: 30 s).
    wait_until_ms: Duration = 30_000.0
    #: CPU a child may burn outside any invocation (tasks left running after
    #: a response) before it is killed; refilled a little by each invocation.
    background_cpu_ms: Duration = 50.0
    namespace: dict[str, LimitDefaults] = {}
    tag: dict[str, LimitDefaults] = {}


class OutboundConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Egress policy for tenants' fetch() (see supervisor.calls.egress)."""

    allow_private_networks: bool = False
    allow_hosts: list[str] = []
    connect_timeout_s: PositiveDuration = 10.0
    #: For the response head and for each read of its body.
    read_timeout_s: PositiveDuration = 30.0
    #: WebSockets to servers (``new WebSocket(url)``) open at once on this
    #: host, every sandbox's together: each holds one of the supervisor's
    #: file descriptors for as long as it stays open (one sandbox holds at
    #: most 256, supervisor.edge.websockets.MAX_SERVER_SOCKETS).
    max_websockets: Positive = 4096


class AdminConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Who may reach the admin API (SPEC section 2)."""

    #: "owner" (0600, the default) or "group" (0660: readable and writable by
    #: the socket's group, e.g. a deploy tool's; set ``socket_group`` to pick it).
    socket_access: Literal["owner", "group"] = "owner"
    socket_group: str | None = None
    #: Optional TCP listener HOST:PORT for a control plane on another host;
    #: every call needs an API token (`corral token create`).
    tcp: str | None = None
    #: PEM files: with both set, the TCP listener speaks TLS only.
    tls_cert: str | None = None
    tls_key: str | None = None


class QuotaLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Storage caps; unset fields fall through (see supervisor.bindings.quota)."""

    #: Keys in one KV namespace.
    kv_keys: Count | None = None
    #: Bytes of one D1 database file.
    d1_bytes: Count | None = None
    #: Bytes of objects in one R2 bucket.
    r2_bytes: Count | None = None
    #: Bytes of one Durable Object's storage (its SQLite file; Cloudflare's is 10 GB).
    durable_object_bytes: Count | None = None
    #: Messages waiting in one queue (for queues).
    queue_messages: Count | None = None
    #: Bytes a script's Cache API caches hold.
    cache_bytes: Count | None = None


class QuotaConfig(QuotaLimits, forbid_unknown_fields=True, kw_only=True):
    """Platform-wide caps, then by namespace, tag and script ("NS/NAME", or
    NAME for a platform script); the tightest that applies wins."""

    namespace: dict[str, QuotaLimits] = {}
    tag: dict[str, QuotaLimits] = {}
    script: dict[str, QuotaLimits] = {}


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Storage bindings (KV, D1, R2, Cache API) under ``<state_dir>/storage``."""

    #: Threads that run storage I/O, off the request loop.
    threads: Positive = 8
    #: Time one D1 query (or batch), or one Durable Object ``sql.exec``, may run before it is interrupted.
    d1_query_ms: PositiveDuration = 30_000.0
    #: Largest D1 result (the sum of its values) returned to a script.
    d1_result_bytes: Positive = 32 * 1024 * 1024
    #: Databases (KV namespaces, D1 databases, R2 indexes) kept open.
    open_databases: Positive = 256
    #: A Durable Object idle this long is evicted (its storage stays).
    durable_object_idle_s: PositiveDuration = 70.0
    #: How long an object kept busy across a deploy runs on in its old code
    #: (Cloudflare's max_delay, 300 s by default); then its next events wait
    #: for those under way and start it anew in the new version.
    durable_object_update_delay_s: PositiveDuration = 300.0
    quota: QuotaConfig = msgspec.field(default_factory=QuotaConfig)


class OtlpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """OpenTelemetry export (supervisor.observability.otel). No endpoint here and
    none in ``OTEL_EXPORTER_OTLP_*``: no exporter at all."""

    #: Base URL of an OTLP/HTTP collector (``/v1/traces`` and ``/v1/logs`` are added).
    endpoint: str = ""
    headers: dict[str, str] = {}
    service_name: str = "corral"
    #: Events (and spans, and log records) queued at most; past it they are dropped.
    max_queue: Positive = 2048
    schedule_delay_ms: Duration = 1000.0
    export_timeout_s: PositiveDuration = 5.0


class ObservabilityConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Trace consumers: tail workers, live tails, usage, metrics, OTLP."""

    #: Per-minute usage rollups in ``STATE/usage.db`` (billing; needs exact cpuTime).
    usage: bool = True
    usage_retention_days: PositiveDuration = 35.0
    usage_flush_s: PositiveDuration = 10.0
    #: Trace events queued per tail consumer at most; past it they are dropped (counted).
    tail_queue_events: Positive = 1000
    tail_batch_events: Positive = 100
    #: Encoded bytes per batch at most (an event bigger than that goes alone):
    #: a batch is one frame to the tail worker, bounded by the channel.
    tail_batch_bytes: Annotated[int, msgspec.Meta(gt=0, le=32 * 1024 * 1024)] = 8 * 1024 * 1024
    #: How long a batch gathers before it is sent.
    tail_batch_wait_ms: Duration = 50.0
    #: How long a tail worker's handler may take (its wall limit, at most).
    tail_timeout_s: PositiveDuration = 10.0
    #: Events a live tail may be behind before it is disconnected.
    live_tail_buffer: Positive = 1000
    max_live_tails: Count = 32
    #: Addresses or networks of proxies whose ``x-corral-request-id`` is kept.
    trusted_proxies: list[str] = []
    #: A per-script label on metrics: cardinality grows with tenants; off by default.
    metrics_script_labels: bool = False
    otlp: OtlpConfig = msgspec.field(default_factory=OtlpConfig)


class ServeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    http: str = "127.0.0.1:8080"
    admin_socket: str | None = None
    state_dir: str = ".corral"
    http_limits: HttpConfig = msgspec.field(default_factory=HttpConfig)
    pool: PoolConfig = msgspec.field(default_factory=PoolConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    outbound: OutboundConfig = msgspec.field(default_factory=OutboundConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    observability: ObservabilityConfig = msgspec.field(default_factory=ObservabilityConfig)
    #: How long a stop (SIGTERM) waits for what is under way: the requests
    #: in flight, the ``waitUntil`` work of those answered, and admin calls
    #: (a deploy). The default covers a request at the wall limit (60 s)
    #: and its waitUntil work after it (30 s); the systemd unit's
    #: TimeoutStopSec is above it.
    drain_s: PositiveDuration = 95.0
    #: Log every request's trace event (outcome, cpuTime, wallTime, children)
    #: as a JSON line; off by default, it costs throughput.
    log_invocations: bool = False
    #: Answer ``/cdn-cgi/handler/scheduled?cron=...`` by running the routed
    #: script's ``scheduled()``, as ``wrangler dev`` does (off: it is public).
    scheduled_test_endpoint: bool = False
    #: Microseconds the supervisor polls for more work before its event loop
    #: sleeps (see supervisor.busy_poll): fewer wake-ups on the request path
    #: for at most this much of its CPU per sleep. 0: off.
    busy_poll_us: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 100
    #: Microseconds the supervisor's cores are kept from halting, while
    #: requests are in flight or one has just ended, after its event loop
    #: last began to wait (see supervisor.core_keeper): an idle-priority
    #: thread spins on each, so a process woken there runs at once. 0: off.
    keep_cores_awake_us: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 2000
    #: How: ``"latency_qos"`` holds a 0 us CPU latency request (every core of
    #: the host polls in the kernel's idle loop; spinning keepers where
    #: ``/dev/cpu_dma_latency`` cannot be opened), ``"spin"`` spins an
    #: idle-priority thread on each of the supervisor's cores only, ``"auto"``
    #: the first if the supervisor may use every CPU of the host, else the second.
    keep_cores_awake_by: Literal["auto", "latency_qos", "spin"] = "auto"

    @property
    def admin_socket_path(self) -> str:
        return self.admin_socket or os.path.join(self.state_dir, "admin.sock")

    @property
    def http_host_port(self) -> tuple[str, int]:
        return host_port(self.http, "http (--http)")


def host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; an empty host is 127.0.0.1), or
    a ValueError that names the setting and the value.

    The port is ASCII digits only (``int()`` takes other scripts' digits,
    and "127.0.0.1:٨٠" listened on port 80), and an IPv6 host is bracketed,
    brackets balanced: "[::1" was read as the host ":" and "[::1:80" as
    "::1" port 80, each a typo that bound something the operator never
    wrote."""
    host, colon, port = text.rpartition(":")
    if not colon or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"{what} must be HOST:PORT with a port from 0 to 65535, got {text!r}")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")) or ":" not in host or "[" in host[1:-1]:
            raise ValueError(f"{what} {text!r}: an IPv6 host goes in balanced brackets, as [::1]:8080")
        return host[1:-1], int(port)
    if ":" in host:
        raise ValueError(f"{what} {text!r}: put an IPv6 host in brackets, as [{host}]:{port}")
    return host or "127.0.0.1", int(port)


def check(config: ServeConfig) -> None:
    """What the types alone cannot say, checked before anything starts: a
    ValueError naming the setting. Each of these failed deep in start-up,
    as a traceback from inside the server's nursery, or not at all."""
    _check_finite(config, "")
    if os.path.exists(config.state_dir) and not os.path.isdir(config.state_dir):
        raise ValueError(f"state_dir (--state-dir) {config.state_dir!r} is not a folder")
    config.http_host_port  # noqa: B018 - raises on a bad address
    if config.admin.tcp:
        host_port(config.admin.tcp, "admin.tcp")
    _check_admin_socket(config)
    _check_admin_access(config.admin)
    endpoint = config.observability.otlp.endpoint
    if endpoint and not _http_url(endpoint):
        raise ValueError(f"observability.otlp.endpoint must be an http:// or https:// URL, got {endpoint!r}")
    for entry in config.observability.trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"observability.trusted_proxies: {entry!r} is not an IP address or "
                             "CIDR network") from None


def _http_url(text: str) -> bool:
    """An http(s) URL with a host: what an OTLP/HTTP exporter can send to
    (anything else started and then lost every export, quietly)."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(text)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # "http://[::1": an unbalanced bracket
        return False


def _check_finite(value: object, where: str) -> None:
    """No ``inf`` or ``nan`` anywhere: TOML has both, and ``inf`` passes
    ``ge=0``; ``usage_retention_days = inf`` stopped start-up with an
    OverflowError traceback. A large finite number says "practically never"."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where.lstrip('.')} must be a finite number, got {value}")
    if isinstance(value, msgspec.Struct):
        for field in value.__struct_fields__:
            _check_finite(getattr(value, field), f"{where}.{field}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")


def _check_admin_socket(config: ServeConfig) -> None:
    """The admin socket's path: short enough to bind, in a folder that
    exists, and not a file that is no socket: the listener replaces what is
    at the path, so ``--admin-socket`` naming a regular file destroyed it."""
    path = config.admin_socket_path
    what = "admin socket (--admin-socket)"
    # It binds PATH.<pid> first, then renames (supervisor.server._unix_listener).
    size = len(os.fsencode(f"{path}.{os.getpid()}"))
    if size > MAX_UNIX_PATH:
        raise ValueError(f"{what} {path!r} is too long: a unix socket path has at most {MAX_UNIX_PATH} "
                         f"bytes, and this one with the temporary suffix Corral binds first has {size}; "
                         "pick a shorter path")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.normpath(folder) != os.path.normpath(os.path.abspath(config.state_dir)) \
            and not os.path.isdir(folder):
        raise ValueError(f"{what} {path!r}: its folder {folder} does not exist or is not a folder")
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # (a state dir that cannot be made: said at start)
        return
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"{what} {path!r} exists and is not a socket; Corral will not replace it")


def _check_admin_access(admin: AdminConfig) -> None:
    """The socket's group exists; TLS has both halves, and they load. One
    half alone served the TCP listener in plain text."""
    if admin.socket_group is not None:
        import grp

        try:
            grp.getgrnam(admin.socket_group)
        except KeyError:
            raise ValueError(f"admin.socket_group: no group named {admin.socket_group!r}") from None
    if bool(admin.tls_cert) != bool(admin.tls_key):
        raise ValueError("admin.tls_cert and admin.tls_key go together: set both for TLS, or neither")
    if admin.tls_cert and admin.tls_key:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(admin.tls_cert, admin.tls_key)
        except OSError as exc:  # (ssl.SSLError is one)
            raise ValueError(f"admin.tls_cert {admin.tls_cert!r} / admin.tls_key {admin.tls_key!r} "
                             f"cannot be loaded: {exc}") from None


def load(path: str | None, **overrides: object) -> ServeConfig:
    """Read ``path`` (TOML) if given, then apply non-None ``overrides``.

    The state dir, when neither the file nor ``--state-dir`` names one, is
    the one systemd made for the service (``StateDirectory=corral`` sets
    ``$STATE_DIRECTORY`` to ``/var/lib/corral``: scripts/corral.service),
    else ``./.corral``."""
    config = ServeConfig()
    named = False
    if path:
        with open(path, "rb") as f:
            text = f.read()
        config = msgspec.toml.decode(text, type=ServeConfig)
        named = "state_dir" in msgspec.toml.decode(text)
    changes = {k: v for k, v in overrides.items() if v is not None}
    systemd_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd_dir and not named and "state_dir" not in changes:
        changes["state_dir"] = systemd_dir
    return msgspec.structs.replace(config, **changes) if changes else config


#: What reading a bad configuration raises; each message names the problem.
ERRORS = (OSError, msgspec.DecodeError, ValueError)


def read(path: str | None, **overrides: object) -> ServeConfig:
    """:func:`load`, then :func:`check`: the configuration ``serve`` starts
    with, and what SIGHUP re-reads to say whether the file is still good."""
    config = load(path, **overrides)
    check(config)
    return config
