"""The Governance gRPC service: a thin edge over ``l7.engine.Engine``."""

from __future__ import annotations

import grpc

from l7.engine import Engine
from l7.server.convert import decision_to_proto, request_from_proto
from l7.v1 import governance_pb2 as pb
from l7.v1 import governance_pb2_grpc as pb_grpc

__all__ = ["GovernanceService"]


class GovernanceService(pb_grpc.GovernanceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:  # noqa: N802
        decision, replayed = self.engine.decide(request_from_proto(request))
        return pb.DecideResponse(decision=decision_to_proto(decision), replayed=replayed)

    def GetDecision(  # noqa: N802
        self, request: pb.GetDecisionRequest, context: grpc.ServicerContext
    ) -> pb.GetDecisionResponse:
        from l7.errors import RequestInvalid

        if not request.decision_id:
            raise RequestInvalid("decision_id", "is required")
        return pb.GetDecisionResponse(
            decision=decision_to_proto(self.engine.get_decision(request.decision_id))
        )
