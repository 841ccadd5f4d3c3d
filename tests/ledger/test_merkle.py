"""RFC 6962 Merkle tree: published vectors, the RFC 9162 verifiers' edge cases, properties.

Vectors (tests/ledger/vectors/merkle_vectors.json) are copied from
transparency-dev/merkle and google/certificate-transparency-go (see its comment).
The corruption probes mirror transparency-dev/merkle proof/verify_test.go
(corruptInclusionProof / corruptConsistencyProof).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import LedgerError
from ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofInvalid,
    consistency_proof,
    event_leaf_hash,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "merkle_vectors.json").read_text()
)
LEAVES = [leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaves"]]
ROOTS = [bytes.fromhex(r) for r in VECTORS["roots"]]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
TREE = MerkleTree(LEAVES)


def _hx(xs: list[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in xs]


# -- published vectors --------------------------------------------------------------------


def test_leaf_and_node_hashes_match_published_levels() -> None:
    levels = VECTORS["node_hashes"]
    assert [h.hex() for h in LEAVES] == levels[0]
    for k in range(1, len(levels)):
        below = _hx(levels[k - 1])
        assert [
            node_hash(below[2 * i], below[2 * i + 1]).hex() for i in range(len(below) // 2)
        ] == (levels[k])


@pytest.mark.parametrize("size", range(9))
def test_every_published_root(size: int) -> None:
    assert TREE.root(size) == ROOTS[size]
    assert root(LEAVES[:size]) == ROOTS[size]
    assert MerkleTree(LEAVES[:size]).root() == ROOTS[size]


def test_empty_root_is_sha256_of_nothing() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT == ROOTS[0]


@pytest.mark.parametrize("v", VECTORS["inclusion"], ids=lambda v: f"{v['index']}of{v['tree_size']}")
def test_published_inclusion_proofs(v: dict[str, Any]) -> None:
    proof, i, n = _hx(v["proof"]), v["index"], v["tree_size"]
    assert TREE.inclusion_proof(i, n) == proof
    assert inclusion_proof(i, LEAVES[:n]) == proof
    assert verify_inclusion(LEAVES[i], i, n, proof, ROOTS[n]) == LEAVES[i]
    if proof:
        _inclusion_probes_all_fail(LEAVES[i], i, n, proof, ROOTS[n])


@pytest.mark.parametrize("v", VECTORS["consistency"], ids=lambda v: f"{v['size1']}to{v['size2']}")
def test_published_consistency_proofs(v: dict[str, Any]) -> None:
    proof, m, n = _hx(v["proof"]), v["size1"], v["size2"]
    assert TREE.consistency_proof(m, n) == proof
    assert consistency_proof(m, LEAVES[:n]) == proof
    assert verify_consistency(m, n, ROOTS[m], ROOTS[n], proof) == ROOTS[n]
    if proof:
        _consistency_probes_all_fail(m, n, ROOTS[m], ROOTS[n], proof)


def test_all_small_proofs_verify() -> None:
    for n in range(1, 9):
        for i in range(n):
            verify_inclusion(LEAVES[i], i, n, TREE.inclusion_proof(i, n), ROOTS[n])
        for m in range(n + 1):
            verify_consistency(m, n, ROOTS[m], ROOTS[n], TREE.consistency_proof(m, n))


# -- corruption probes (as in transparency-dev/merkle verify_test.go) -----------------------


def _inclusion_probes_all_fail(leaf: bytes, i: int, n: int, proof: list[bytes], rt: bytes) -> None:
    probes: list[tuple[str, Any, Any, Any, Any, Any]] = [
        ("index-1", leaf, i - 1, n, proof, rt),
        ("index+1", leaf, i + 1, n, proof, rt),
        ("index^2", leaf, i ^ 2, n, proof, rt),
        ("size*2", leaf, i, n * 2, proof, rt),
        ("size/2", leaf, i, n // 2, proof, rt),
        ("wrong leaf", b"WrongLeaf", i, n, proof, rt),
        ("wrong leaf 32", SOME_HASH, i, n, proof, rt),
        ("empty root", leaf, i, n, proof, EMPTY_ROOT),
        ("random root", leaf, i, n, proof, SOME_HASH),
        ("trailing garbage", leaf, i, n, [*proof, b""], rt),
        ("trailing root", leaf, i, n, [*proof, rt], rt),
        ("preceding garbage", leaf, i, n, [b"", *proof], rt),
        ("preceding root", leaf, i, n, [rt, *proof], rt),
        ("removed component", leaf, i, n, proof[:-1], rt),
    ]
    if len(proof) > 1:
        probes.append(("inserted component", leaf, i, n, [proof[0], SOME_HASH, *proof[1:]], rt))
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 8]) + bad[k][1:]
        probes.append((f"proof[{k}] bit 3", leaf, i, n, bad, rt))
    for desc, lf, idx, size, pr, r in probes:
        if idx < 0:
            continue
        with pytest.raises(ProofInvalid):
            verify_inclusion(lf, idx, size, pr, r)
            pytest.fail(f"accepted: {desc}")


def _consistency_probes_all_fail(m: int, n: int, r1: bytes, r2: bytes, proof: list[bytes]) -> None:
    probes: list[tuple[str, int, int, bytes, bytes, list[bytes]]] = [
        ("size1-1", m - 1, n, r1, r2, proof),
        ("size1+1", m + 1, n, r1, r2, proof),
        ("size1^2", m ^ 2, n, r1, r2, proof),
        ("size2*2", m, n * 2, r1, r2, proof),
        ("size2/2", m, n // 2, r1, r2, proof),
        ("wrong root1", m, n, b"WrongRoot", r2, proof),
        ("wrong root2", m, n, r1, b"WrongRoot", proof),
        ("random root1", m, n, SOME_HASH, r2, proof),
        ("random root2", m, n, r1, SOME_HASH, proof),
        ("swapped roots", m, n, r2, r1, proof),
        ("empty proof", m, n, r1, r2, []),
        ("trailing garbage", m, n, r1, r2, [*proof, b""]),
        ("trailing root1", m, n, r1, r2, [*proof, r1]),
        ("trailing root2", m, n, r1, r2, [*proof, r2]),
        ("preceding garbage", m, n, r1, r2, [b"", *proof]),
        ("preceding root1", m, n, r1, r2, [r1, *proof]),
        ("preceding root2", m, n, r1, r2, [r2, *proof]),
        ("preceding proof[0]", m, n, r1, r2, [proof[0], *proof]),
        ("truncated proof", m, n, r1, r2, proof[:-1]),
    ]
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 16]) + bad[k][1:]
        probes.append((f"proof[{k}] bit 4", m, n, r1, r2, bad))
    for desc, s1, s2, a, b, pr in probes:
        if s1 < 0:
            continue
        with pytest.raises(ProofInvalid):
            verify_consistency(s1, s2, a, b, pr)
            pytest.fail(f"accepted: {desc}")


# -- RFC 9162 edge cases ------------------------------------------------------------------


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (1, 1), (2, 1), (8, 8), (9, 8)])
def test_inclusion_index_outside_tree_raises(index: int, size: int) -> None:
    for rt in (EMPTY_ROOT, SOME_HASH, ROOTS[1]):
        with pytest.raises(ProofInvalid, match="not inside a tree"):
            verify_inclusion(LEAVES[0], index, size, [], rt)


def test_inclusion_single_leaf_tree() -> None:
    h = leaf_hash(b"data")
    assert verify_inclusion(h, 0, 1, [], h) == h
    for lf, rt in ((h, b""), (b"", h), (b"", b"")):
        with pytest.raises(ProofInvalid, match="32 bytes"):
            verify_inclusion(lf, 0, 1, [], rt)
    with pytest.raises(ProofInvalid, match="too long"):
        verify_inclusion(h, 0, 1, [h], h)


def test_inclusion_rejects_bad_types() -> None:
    with pytest.raises(ProofInvalid):
        verify_inclusion(LEAVES[0], True, 8, TREE.inclusion_proof(1, 8), ROOTS[8])
    with pytest.raises(ProofInvalid):
        verify_inclusion(LEAVES[0], -1, 8, [], ROOTS[8])
    with pytest.raises(ProofInvalid):
        verify_inclusion(LEAVES[0], 0, 8, b"".join(TREE.inclusion_proof(0, 8)), ROOTS[8])  # type: ignore[arg-type]


def test_consistency_edge_cases() -> None:
    # size1 > size2: time travel.
    with pytest.raises(ProofInvalid, match="backwards"):
        verify_consistency(2, 1, ROOTS[2], ROOTS[1], [])
    with pytest.raises(ProofInvalid, match="backwards"):
        verify_consistency(1, 0, ROOTS[1], ROOTS[0], [])
    # size1 == size2: empty proof, equal roots.
    assert verify_consistency(3, 3, ROOTS[3], ROOTS[3], []) == ROOTS[3]
    with pytest.raises(ProofInvalid, match="two roots"):
        verify_consistency(3, 3, ROOTS[3], ROOTS[4], [])
    with pytest.raises(ProofInvalid, match="must be empty"):
        verify_consistency(3, 3, ROOTS[3], ROOTS[3], [ROOTS[3]])
    # size1 == 0: the empty tree is a prefix of everything, with the empty root only.
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, []) == EMPTY_ROOT
    assert verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], []) == ROOTS[5]
    with pytest.raises(ProofInvalid, match="empty tree"):
        verify_consistency(0, 5, SOME_HASH, ROOTS[5], [])
    with pytest.raises(ProofInvalid, match="empty tree"):
        verify_consistency(0, 0, EMPTY_ROOT, SOME_HASH, [])
    with pytest.raises(ProofInvalid, match="must be empty"):
        verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [EMPTY_ROOT])
    # 0 < size1 < size2 with an empty proof.
    with pytest.raises(ProofInvalid, match="empty consistency proof"):
        verify_consistency(1, 2, ROOTS[1], ROOTS[2], [])


def test_generators_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="outside"):
        TREE.inclusion_proof(8)
    with pytest.raises(ValueError, match="outside"):
        TREE.inclusion_proof(0, 0)
    with pytest.raises(ValueError, match="outside"):
        TREE.root(9)
    with pytest.raises(ValueError, match="outside"):
        TREE.consistency_proof(5, 4)
    with pytest.raises(ProofInvalid):
        MerkleTree([b"short"])
    with pytest.raises(ProofInvalid):
        event_leaf_hash("AB" * 32)


def test_tree_size_is_bound_by_the_checkpoint_not_the_proof() -> None:
    """RFC 6962 proofs do not pin the tree size on their own: leaf 0's proof in a tree of 8
    has the same shape in trees of 5..8 leaves, so it "verifies" for a claimed size of 5
    against the size-8 root. That is why a root is only ever trusted together with the
    tree_size it was signed with (``ledger.checkpoint``); any other index always fails."""
    proof = TREE.inclusion_proof(0, 8)
    for size in (5, 6, 7, 8):
        verify_inclusion(LEAVES[0], 0, size, proof, ROOTS[8])
    for size in (4, 9, 16):
        with pytest.raises(ProofInvalid):
            verify_inclusion(LEAVES[0], 0, size, proof, ROOTS[8])
    for index in range(1, 8):
        with pytest.raises(ProofInvalid):
            verify_inclusion(LEAVES[0], index, 8, proof, ROOTS[8])


def test_proof_invalid_is_a_ledger_error() -> None:
    assert issubclass(ProofInvalid, LedgerError)


def test_incremental_appends_equal_bulk_build() -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(300)]
    inc = MerkleTree()
    for n, h in enumerate(leaves, start=1):
        inc.append(h)
        assert inc.size == n
        assert inc.root() == _ref_root(leaves[:n])
    bulk = MerkleTree(leaves[:100])
    bulk.extend(leaves[100:])
    assert bulk.root() == inc.root()
    assert [bulk.leaf(i) for i in range(300)] == leaves


# -- properties ---------------------------------------------------------------------------


def _ref_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, recursively, as the definition reads."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_ref_root(leaves[:k]), _ref_root(leaves[k:]))


def _tree(n: int) -> tuple[MerkleTree, list[bytes]]:
    leaves = [leaf_hash(b"leaf-%d" % i) for i in range(n)]
    return MerkleTree(leaves), leaves


def _flip(proof: list[bytes], k: int, bit: int) -> list[bytes]:
    bad = list(proof)
    byte, b = divmod(bit, 8)
    node = bytearray(bad[k])
    node[byte] ^= 1 << b
    bad[k] = bytes(node)
    return bad


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_property_inclusion(n: int, data: st.DataObject) -> None:
    tree, leaves = _tree(n)
    rt = tree.root()
    assert rt == _ref_root(leaves)
    for i in range(n):  # every inclusion proof verifies
        verify_inclusion(leaves[i], i, n, tree.inclusion_proof(i), rt)
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = tree.inclusion_proof(i)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1), label="element")
        bit = data.draw(st.integers(0, 255), label="bit")
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaves[i], i, n, _flip(proof, k, bit), rt)
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaves[i], i, n, proof[:-1], rt)
    other = data.draw(st.integers(0, 2 * n).filter(lambda x: x != i), label="other index")
    with pytest.raises(ProofInvalid):
        verify_inclusion(leaves[i], other, n, proof, rt)
    for size in (2 * n, n // 2):  # see test_tree_size_is_bound_by_the_checkpoint_not_the_proof
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaves[i], i, size, proof, rt)
    with pytest.raises(ProofInvalid):
        verify_inclusion(leaves[i], i, n, proof, _flip([rt], 0, data.draw(st.integers(0, 255)))[0])
    for extra in (rt, leaves[i], SOME_HASH):
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaves[i], i, n, [*proof, extra], rt)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_property_consistency(n: int, data: st.DataObject) -> None:
    tree, leaves = _tree(n)
    rt = tree.root()
    sizes = data.draw(st.lists(st.integers(0, n), min_size=1, max_size=12), label="m")
    for m in sizes:  # generated proofs verify
        verify_consistency(m, n, tree.root(m), rt, tree.consistency_proof(m))
    m = data.draw(st.integers(1, n - 1), label="size1") if n > 1 else 1
    proof = tree.consistency_proof(m)
    r1 = tree.root(m)
    assert r1 == _ref_root(leaves[:m])
    if not proof:  # m == n
        with pytest.raises(ProofInvalid):
            verify_consistency(m, n, r1, rt, [rt])
        return
    k = data.draw(st.integers(0, len(proof) - 1), label="element")
    bit = data.draw(st.integers(0, 255), label="bit")
    with pytest.raises(ProofInvalid):
        verify_consistency(m, n, r1, rt, _flip(proof, k, bit))
    with pytest.raises(ProofInvalid):
        verify_consistency(m, n, r1, rt, proof[:-1])
    for extra in (r1, rt, SOME_HASH):
        with pytest.raises(ProofInvalid):
            verify_consistency(m, n, r1, rt, [*proof, extra])
    m2 = data.draw(st.integers(0, 2 * n).filter(lambda x: x != m), label="other size1")
    with pytest.raises(ProofInvalid):
        verify_consistency(m2, n, r1, rt, proof)
    for n2 in (2 * n, n // 2):  # see test_tree_size_is_bound_by_the_checkpoint_not_the_proof
        with pytest.raises(ProofInvalid):
            verify_consistency(m, n2, r1, rt, proof)
    with pytest.raises(ProofInvalid):
        verify_consistency(m, n, _flip([r1], 0, bit)[0], rt, proof)
    with pytest.raises(ProofInvalid):
        verify_consistency(m, n, r1, _flip([rt], 0, bit)[0], proof)
