"""Boundary A: the governance engine."""

from l7.engine.engine import Engine
from l7.engine.interface import Clock, PolicyEvaluator
from l7.engine.validate import request_from_dict

__all__ = ["Clock", "Engine", "PolicyEvaluator", "request_from_dict"]
