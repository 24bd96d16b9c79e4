"""Whether OTLP export is configured, without importing the OpenTelemetry SDK."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervisor.config import OtlpConfig

ENV_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")


def configured(config: OtlpConfig, environ: dict[str, str] | None = None) -> bool:
    """An endpoint in the config file or in the standard environment variables
    (and the SDK not disabled with ``OTEL_SDK_DISABLED=true``)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(config.endpoint) or any(env.get(name) for name in ENV_ENDPOINTS)
