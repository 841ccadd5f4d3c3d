"""Local development servers (OpenBao dev mode) for the demo and the test suite."""
