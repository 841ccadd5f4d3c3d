"""Boundary B: the execution gateway, its grants, and the governed-tool client."""
