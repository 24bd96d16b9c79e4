"""Observability: trace events, tail workers, live tail, usage, metrics, OTLP.

Every finished invocation reaches :class:`~supervisor.observability.pipeline.Observability`
once (with everything it called nested), which fans it out to whoever
consumes traces. Nothing here runs on the request path: an invocation is
handed on only when its response and its ``waitUntil`` work are over, and
every consumer is bounded and drops (counting) rather than waits.
"""
