"""Layer-7: policy-as-code governance between intent and execution."""

__version__ = "0.1.0"
