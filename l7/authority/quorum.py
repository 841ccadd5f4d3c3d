"""Does a set of approvers satisfy an authority requirement?

A requirement is a tuple of clauses, ALL of which must hold; clause ``c`` needs
``c.count`` distinct approvers it accepts, and one identity fills at most one slot of
one clause. That is a bipartite matching problem: each clause is expanded into
``count`` slots, approvers (deduplicated by subject) are matched to the slots they
qualify for, and the requirement holds iff a maximum matching fills every slot.

The matching is computed with augmenting paths (Kuhn's algorithm; sizes are a handful),
so an order that would trap a first-fit assignment (an L4 spent on the L3 clause while
the L4 co-sign clause stays empty) never decides the answer.

Which clause an unfilled slot is reported against (``missing``) follows a fixed
preference: the most demanding clauses (highest ``min_level``) are filled first, so
what remains missing is the easiest to supply. The result does not depend on the order
approvers are given in. An empty requirement is never satisfied (fail closed): a
decision that needs no authority does not reach this function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from l7.domain import Clause
from l7.errors import ConfigError

__all__ = ["Approver", "QuorumState", "clause_accepts", "evaluate_quorum"]


@dataclass(frozen=True)
class Approver:
    """An approval counted toward quorum: who, at which level (roles read at approval time)."""

    subject: str
    level: int
    roles: tuple[str, ...] = ()
    team: str | None = None


@dataclass(frozen=True)
class QuorumState:
    satisfied: bool
    assignment: Mapping[str, tuple[str, ...]]
    """clause id -> subjects filling it (sorted); every clause has an entry"""
    missing: Mapping[str, int]
    """clause id -> approvals still needed; only clauses that are short appear"""


def clause_accepts(clause: Clause, approver: Approver) -> bool:
    """Whether ``approver`` may fill a slot of ``clause``. The hook for further
    constraints (a role, a team other than the requester's) when clauses carry them."""
    return approver.level >= clause.min_level


def _check(clauses: Sequence[Clause]) -> None:
    seen: set[str] = set()
    for c in clauses:
        if c.id in seen:
            raise ConfigError(f"authority clause id {c.id!r} appears twice; fix the policy data")
        if c.count < 1:
            raise ConfigError(
                f"authority clause {c.id!r} asks for {c.count} approvals; a clause needs at "
                "least 1 (drop the clause instead)"
            )
        seen.add(c.id)


def _distinct(approvers: Iterable[Approver]) -> list[list[Approver]]:
    """Approvals grouped by subject, subjects sorted (one identity, one vertex)."""
    by_subject: dict[str, list[Approver]] = {}
    for a in approvers:
        by_subject.setdefault(a.subject, []).append(a)
    return [by_subject[s] for s in sorted(by_subject)]


def evaluate_quorum(clauses: Sequence[Clause], approvers: Iterable[Approver]) -> QuorumState:
    clauses = tuple(clauses)
    _check(clauses)
    people = _distinct(approvers)
    # Slots, most demanding clause first (the order Kuhn's algorithm fills them in).
    order = sorted(range(len(clauses)), key=lambda i: (-clauses[i].min_level, i))
    slots = [i for i in order for _ in range(clauses[i].count)]
    # A subject listed more than once qualifies only where every listing does (a
    # conflicting duplicate never widens what it can fill). Within a slot's candidates,
    # the lowest level is tried first, keeping senior approvers free for senior clauses.
    candidates: list[list[int]] = []
    for ci in slots:
        ok = [
            p
            for p, group in enumerate(people)
            if all(clause_accepts(clauses[ci], a) for a in group)
        ]
        ok.sort(key=lambda p: (min(a.level for a in people[p]), p))
        candidates.append(ok)

    holder: dict[int, int] = {}  # person index -> slot index

    def augment(slot: int, visited: set[int]) -> bool:
        for p in candidates[slot]:
            if p in visited:
                continue
            visited.add(p)
            if p not in holder or augment(holder[p], visited):
                holder[p] = slot
                return True
        return False

    for s in range(len(slots)):
        augment(s, set())

    filled: dict[str, list[str]] = {c.id: [] for c in clauses}
    for p, s in holder.items():
        filled[clauses[slots[s]].id].append(people[p][0].subject)
    missing = {c.id: c.count - len(filled[c.id]) for c in clauses if len(filled[c.id]) < c.count}
    return QuorumState(
        satisfied=bool(clauses) and not missing,
        assignment=MappingProxyType({k: tuple(sorted(v)) for k, v in filled.items()}),
        missing=MappingProxyType(missing),
    )
