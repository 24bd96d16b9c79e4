"""Durable Objects: live instances on children, their input gates, eviction,
storage and alarms (the binding handlers are supervisor.bindings.durable_objects)."""
