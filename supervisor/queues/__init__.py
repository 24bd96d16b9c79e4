"""Queues: a durable SQLite queue per (dispatch namespace, queue name), and
the consumer loops that deliver its messages in batches."""
