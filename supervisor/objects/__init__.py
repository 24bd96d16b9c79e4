"""Durable Objects: live instances on children, eviction,
storage and alarms (the binding handlers are supervisor.bindings.durable_objects)."""
