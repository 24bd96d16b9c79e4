"""Helpers for scripts/bench: Corral vs workerd vs a bare trio+h11 server.

Everything generated at run time lives under <repo>/.bench/ (git-ignored).
"""
