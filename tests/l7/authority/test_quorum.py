"""Quorum: clauses ANDed, counts within each, one identity fills one slot, optimal matching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l7.authority.quorum import Approver, QuorumState, clause_accepts, evaluate_quorum
from l7.domain import Clause
from l7.errors import ConfigError

MANAGERS = Clause("managers", 3, 2)
COSIGN = Clause("security_cosign", 4, 1)
REQ = (MANAGERS, COSIGN)


def ap(subject: str, level: int) -> Approver:
    return Approver(subject, level, (), None)


def first_fit(clauses: tuple[Clause, ...], approvers: list[Approver]) -> bool:
    """The naive assignment: each approver takes the first clause with room that accepts it."""
    room = {c.id: c.count for c in clauses}
    for a in approvers:
        for c in clauses:
            if room[c.id] and clause_accepts(c, a):
                room[c.id] -= 1
                break
    return not any(room.values())


def test_example_satisfied_even_with_the_senior_listed_first() -> None:
    q = evaluate_quorum(REQ, [ap("A", 4), ap("B", 3), ap("C", 3)])
    assert q == QuorumState(True, {"managers": ("B", "C"), "security_cosign": ("A",)}, {})


def test_greedy_trap_first_fit_fails_matching_succeeds() -> None:
    approvers = [ap("A", 4), ap("B", 3), ap("C", 3)]
    assert not first_fit(REQ, approvers)
    assert evaluate_quorum(REQ, approvers).satisfied


def test_two_approvers_for_three_slots_report_the_easiest_missing_clause() -> None:
    q = evaluate_quorum(REQ, [ap("A", 4), ap("B", 3)])
    assert not q.satisfied
    assert dict(q.missing) == {"managers": 1}
    assert dict(q.assignment) == {"managers": ("B",), "security_cosign": ("A",)}


def test_one_senior_never_fills_two_slots() -> None:
    q = evaluate_quorum(REQ, [ap("A", 5)])
    assert not q.satisfied
    assert dict(q.missing) == {"managers": 2}
    assert evaluate_quorum((Clause("exec", 5, 2),), [ap("A", 5)]).missing == {"exec": 1}


def test_duplicate_subjects_count_once() -> None:
    q = evaluate_quorum(REQ, [ap("A", 4), ap("A", 4), ap("A", 4)])
    assert not q.satisfied
    assert sum(len(v) for v in q.assignment.values()) == 1


def test_conflicting_duplicates_never_widen_what_a_subject_fills() -> None:
    q = evaluate_quorum((COSIGN,), [ap("A", 5), ap("A", 2)])
    assert not q.satisfied and q.missing == {"security_cosign": 1}


def test_levels_below_every_clause_fill_nothing() -> None:
    q = evaluate_quorum(REQ, [ap("x", 1), ap("y", 2), ap("z", 2)])
    assert dict(q.missing) == {"managers": 2, "security_cosign": 1}
    assert dict(q.assignment) == {"managers": (), "security_cosign": ()}


def test_empty_requirement_is_never_satisfied_and_state_is_frozen() -> None:
    q = evaluate_quorum((), [ap("A", 5)])
    assert not q.satisfied and dict(q.missing) == {} and dict(q.assignment) == {}
    with pytest.raises(TypeError):
        q.missing["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("clauses", "match"),
    [
        ((Clause("a", 3, 1), Clause("a", 4, 1)), "clause id 'a' appears twice"),
        ((Clause("a", 3, 0),), "asks for 0 approvals"),
    ],
)
def test_malformed_requirements_are_refused(clauses: tuple[Clause, ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        evaluate_quorum(clauses, [ap("A", 5)])


def test_a_chain_of_displacements_is_found() -> None:
    # Listed clauses low-to-high and seniors first, first-fit spends both L5s on c3/c2 and
    # leaves C (L4) facing the L5 clause; matching re-routes through two augmenting steps.
    c1, c2, c3 = Clause("c1", 5, 1), Clause("c2", 4, 1), Clause("c3", 3, 1)
    people = [ap("B", 5), ap("A", 5), ap("C", 4)]
    assert not first_fit((c3, c2, c1), people)
    q = evaluate_quorum((c3, c2, c1), people)
    assert q.satisfied
    assert q.assignment["c3"] == ("C",) or q.assignment["c2"] == ("C",)


# -- properties ---------------------------------------------------------------------------

_clauses = st.lists(
    st.builds(Clause, st.sampled_from("abcde"), st.integers(1, 5), st.integers(1, 3)),
    min_size=1,
    max_size=4,
    unique_by=lambda c: c.id,
)
_approvers = st.lists(
    st.builds(ap, st.sampled_from([f"p{i}" for i in range(8)]), st.integers(1, 5)),
    max_size=10,
    unique_by=lambda a: a.subject,
)


@given(_clauses, _approvers, st.randoms(use_true_random=False))
def test_order_never_changes_the_answer(
    clauses: list[Clause], approvers: list[Approver], rnd: object
) -> None:
    shuffled = list(approvers)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert evaluate_quorum(clauses, shuffled) == evaluate_quorum(clauses, approvers)


def _brute_force(clauses: list[Clause], approvers: list[Approver]) -> bool:
    slots = [c for c in clauses for _ in range(c.count)]

    def place(i: int, used: frozenset[str]) -> bool:
        if i == len(slots):
            return True
        return any(
            place(i + 1, used | {a.subject})
            for a in approvers
            if a.subject not in used and clause_accepts(slots[i], a)
        )

    return place(0, frozenset())


@given(_clauses, _approvers)
def test_matches_exhaustive_search(clauses: list[Clause], approvers: list[Approver]) -> None:
    q = evaluate_quorum(clauses, approvers)
    assert q.satisfied == _brute_force(clauses, approvers)
    # The assignment is consistent: distinct subjects, each accepted by its clause.
    by_id = {c.id: c for c in clauses}
    level = {a.subject: a.level for a in approvers}
    assigned = [s for subs in q.assignment.values() for s in subs]
    assert len(assigned) == len(set(assigned))
    for cid, subs in q.assignment.items():
        assert len(subs) + q.missing.get(cid, 0) == by_id[cid].count
        assert all(level[s] >= by_id[cid].min_level for s in subs)
