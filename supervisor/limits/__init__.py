"""Limits: which apply (policy), CPU kept by the kernel (meter, accounting), memory (cgroups or prlimit)."""
