"""The embedded SQLite store of scripts, namespaces and routes."""
