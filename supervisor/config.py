"""Configuration of ``corral serve``: one msgspec Struct tree, read from TOML.

Every knob has a default that works on a small host; a config file
(``--config corral.toml``) overrides them, and command-line flags override the
file. Unknown keys are an error, so a typo never silently does nothing.
"""

from __future__ import annotations

import os

import msgspec


class HttpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Ingress HTTP limits and timeouts."""

    max_header_bytes: int = 32 * 1024
    max_body_bytes: int = 100 * 1024 * 1024
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    max_connections: int = 10_000


class PoolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The warm pool of jailed children."""

    spares: int = 8
    max_children: int = 4000
    idle_timeout_s: float = 120.0
    #: Memory cap of every child, and the ceiling of a per-invocation memoryMb.
    memory_mb: int = 128
    #: How memory limits are enforced (see supervisor.limits.memory): "auto"
    #: picks a per-child cgroup (v2, then v1) where the host delegates one,
    #: else prlimit(); "cgroup" or "prlimit" insist on one (start fails if
    #: this host cannot give it).
    memory_enforcement: str = "auto"
    #: A zygote is replaced after this long, or after forking this many
    #: children, whichever comes first: its children share its hash seed.
    zygote_max_age_s: float = 3600.0
    zygote_max_children: int = 1000


class LimitDefaults(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Defaults for one namespace or tag; unset fields fall through."""

    cpu_ms: float | None = None
    sub_requests: int | None = None
    wall_ms: float | None = None
    memory_mb: int | None = None


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-invocation limits: platform defaults and ceilings (see supervisor.limits.policy)."""

    cpu_ms: float = 30_000.0
    sub_requests: int = 1000
    wall_ms: float = 60_000.0
    memory_mb: int = 128
    #: How long ``waitUntil`` work may run after the response (Cloudflare: 30 s).
    wait_until_ms: float = 30_000.0
    #: CPU a child may burn outside any invocation (tasks left running after
    #: a response) before it is killed; refilled a little by each invocation.
    background_cpu_ms: float = 50.0
    namespace: dict[str, LimitDefaults] = {}
    tag: dict[str, LimitDefaults] = {}


class OutboundConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Egress policy for tenants' fetch() (see supervisor.calls.egress)."""

    allow_private_networks: bool = False
    allow_hosts: list[str] = []
    connect_timeout_s: float = 10.0
    #: For the response head and for each read of its body.
    read_timeout_s: float = 30.0


class ServeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    http: str = "127.0.0.1:8080"
    admin_socket: str | None = None
    state_dir: str = ".corral"
    http_limits: HttpConfig = msgspec.field(default_factory=HttpConfig)
    pool: PoolConfig = msgspec.field(default_factory=PoolConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    outbound: OutboundConfig = msgspec.field(default_factory=OutboundConfig)
    #: Log every request's trace event (outcome, cpuTime, wallTime, children)
    #: as a JSON line; off by default, it costs throughput.
    log_invocations: bool = False
    #: Answer ``/cdn-cgi/handler/scheduled?cron=...`` by running the routed
    #: script's ``scheduled()``, as ``wrangler dev`` does (off: it is public).
    scheduled_test_endpoint: bool = False

    @property
    def admin_socket_path(self) -> str:
        return self.admin_socket or os.path.join(self.state_dir, "admin.sock")

    @property
    def http_host_port(self) -> tuple[str, int]:
        host, _, port = self.http.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


def load(path: str | None, **overrides: object) -> ServeConfig:
    """Read ``path`` (TOML) if given, then apply non-None ``overrides``."""
    config = ServeConfig()
    if path:
        with open(path, "rb") as f:
            config = msgspec.toml.decode(f.read(), type=ServeConfig)
    changes = {k: v for k, v in overrides.items() if v is not None}
    return msgspec.structs.replace(config, **changes) if changes else config
