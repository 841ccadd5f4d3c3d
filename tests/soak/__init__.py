"""Soak with faults: sustained mixed load while dependencies are killed (issue #8 item 2)."""
