"""RFC 6962 / RFC 9162 Merkle tree over the global log, with proofs and verifiers.

Leaf ``i`` of the ledger's tree is the event hash of ``global_seq i + 1`` (the
64 hex digits decoded to 32 raw bytes)::

    leaf_hash = sha256(0x00 || data)             data = event hash bytes
    node_hash = sha256(0x01 || left || right)
    MTH({})   = sha256("")
    MTH(D[n]) = node_hash(MTH(D[0:k]), MTH(D[k:n]))   k = largest power of 2 < n

The 0x00 / 0x01 prefixes keep a leaf from ever being read as an inner node
(RFC 6962 §2.1, second-preimage resistance).

``MerkleTree`` keeps, per level, every *full* subtree hash seen so far as one
packed ``bytearray`` (32 bytes each, about 64 MB for a million leaves), so
appending is amortised O(1) and the root or any proof for any prefix size is
O(log^2 n) hash calls (one-off: the cached full subtrees are never recomputed).

The verifiers follow RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency)
step by step; the step numbers are in the comments. They raise ``ProofInvalid``
and never return False. Outside the RFC's ``0 < first < second`` they are
strict: ``first == second`` needs an empty proof and equal roots, ``first == 0``
needs an empty proof and ``root1 == MTH({})``; every hash must be 32 bytes.

A proof binds the leaf index (or first size) but, as in RFC 6962 itself, not
the tree size on its own: a proof of leaf 0 in a tree of 8 has the same shape
for sizes 5..8. Trust a root only together with the size it was signed with
(``ledger.checkpoint``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence

from ledger.errors import LedgerError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "ProofInvalid",
    "consistency_proof",
    "event_leaf_hash",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH of the empty tree: sha256 of the empty string."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 2 * HASH_SIZE * 65536  # pairs hashed per batch while completing a level
_sha256 = hashlib.sha256


class ProofInvalid(LedgerError):
    """A piece of evidence (Merkle proof, signed checkpoint, audit pack) is malformed
    or does not verify. Raised by every ``verify_*`` in ``ledger.merkle``,
    ``ledger.checkpoint`` and ``ledger.export``; they never return False."""


def leaf_hash(data: bytes) -> bytes:
    """sha256(0x00 || data): the hash of one leaf's data."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """sha256(0x01 || left || right): the hash of an inner node."""
    return _sha256(NODE_PREFIX + left + right).digest()


def event_leaf_hash(event_hash: str) -> bytes:
    """The leaf hash of a ledger event: leaf_hash(bytes.fromhex(event_hash))."""
    if not isinstance(event_hash, str) or not _HEX64.fullmatch(event_hash):
        raise ProofInvalid(f"an event hash is 64 lower-case hex digits, got {event_hash!r:.80}")
    return leaf_hash(bytes.fromhex(event_hash))


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(what: str, value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        shown = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise ProofInvalid(f"{what} must be {HASH_SIZE} bytes, got {shown}")
    return value


def _check_size(what: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofInvalid(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _check_proof(proof: Sequence[bytes]) -> list[bytes]:
    if isinstance(proof, bytes | str) or not isinstance(proof, Sequence):
        raise ProofInvalid(f"a proof is a sequence of {HASH_SIZE}-byte hashes")
    return [_check_hash(f"proof[{i}]", p) for i, p in enumerate(proof)]


class MerkleTree:
    """An append-only RFC 6962 tree over leaf *hashes* (see ``leaf_hash``).

    ``root(size)``, ``inclusion_proof(index, size)`` and ``consistency_proof(size1,
    size2)`` work for any prefix ``size <= self.size``, so one tree built over the
    whole log answers for every checkpoint.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        # _levels[k] packs the hashes of the full subtrees of 2**k leaves, left to right.
        self._levels: list[bytearray] = [bytearray()]
        self.extend(leaf_hashes)

    @classmethod
    def from_event_hashes(cls, event_hashes: Iterable[str]) -> MerkleTree:
        """A tree whose leaf i is ``event_leaf_hash(event_hashes[i])``."""
        return cls(event_leaf_hash(h) for h in event_hashes)

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def __len__(self) -> int:
        return self.size

    def append(self, leaf_hash: bytes) -> None:
        self.extend((leaf_hash,))

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append leaf hashes (32 bytes each), then hash every newly completed subtree."""
        buf = bytearray()
        for i, h in enumerate(leaf_hashes):
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise ProofInvalid(f"leaf hash #{i} must be {HASH_SIZE} bytes, got {h!r:.80}")
            buf += h
        self._levels[0] += buf
        self._complete()

    def _complete(self) -> None:
        """Hash pairs on each level into the next until no new full subtree appears."""
        sha, prefix, step = _sha256, NODE_PREFIX, 2 * HASH_SIZE
        level = 0
        while True:
            cur = self._levels[level]
            pairs = len(cur) // step
            if pairs == 0:
                return
            if level + 1 == len(self._levels):
                self._levels.append(bytearray())
            nxt = self._levels[level + 1]
            have = len(nxt) // HASH_SIZE
            for lo in range(have * step, pairs * step, _CHUNK):  # bounded temporaries
                seg = bytes(cur[lo : min(lo + _CHUNK, pairs * step)])
                nxt += b"".join(
                    sha(prefix + seg[i : i + step]).digest() for i in range(0, len(seg), step)
                )
            level += 1

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index`` (0-based)."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf index {index} outside a tree of {self.size} leaves")
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _size_arg(self, size: int | None) -> int:
        n = self.size if size is None else size
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= self.size:
            raise ValueError(f"tree size {size!r} outside 0..{self.size}")
        return n

    def _mth(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for 0 <= start < end <= size, from cached full subtrees."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            k = n.bit_length() - 1
            off = (start >> k) * HASH_SIZE
            return bytes(self._levels[k][off : off + HASH_SIZE])
        k = _split(n)
        return node_hash(self._mth(start, start + k), self._mth(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        n = self._size_arg(size)
        return EMPTY_ROOT if n == 0 else self._mth(0, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) of RFC 6962 §2.1.1, leaf-side first."""
        n = self._size_arg(size)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
            raise ValueError(f"leaf index {index!r} outside a tree of {n} leaves")
        path: list[bytes] = []
        start, end, m = 0, n, index
        while end - start > 1:
            k = _split(end - start)
            if m < k:
                path.append(self._mth(start + k, end))
                end = start + k
            else:
                path.append(self._mth(start, start + k))
                start, m = start + k, m - k
        path.reverse()
        return path

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """PROOF(size1, D[size2]) of RFC 6962 §2.1.2; empty for size1 in (0, size2)."""
        n = self._size_arg(size2)
        if not isinstance(size1, int) or isinstance(size1, bool) or not 0 <= size1 <= n:
            raise ValueError(f"first tree size {size1!r} outside 0..{n}")
        if size1 in (0, n):
            return []
        path: list[bytes] = []
        start, end, m, whole = 0, n, size1, True
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                path.append(self._mth(start + k, end))
                end = start + k
            else:
                path.append(self._mth(start, start + k))
                start, m, whole = start + k, m - k, False
        if not whole:
            path.append(self._mth(start, end))
        path.reverse()
        return path


def root(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH over the given leaf hashes."""
    return MerkleTree(leaf_hashes).root()


def inclusion_proof(index: int, leaves: Iterable[bytes]) -> list[bytes]:
    """Inclusion proof of leaf ``index`` in the tree over all of ``leaves`` (leaf hashes)."""
    return MerkleTree(leaves).inclusion_proof(index)


def consistency_proof(m: int, leaves_n: Iterable[bytes]) -> list[bytes]:
    """Consistency proof from the first ``m`` leaves to all of ``leaves_n`` (leaf hashes)."""
    return MerkleTree(leaves_n).consistency_proof(m)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bytes:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    RFC 9162 §2.1.3.2. Returns the verified leaf hash; raises ProofInvalid.
    """
    leaf = _check_hash("leaf hash", leaf_hash)
    expected = _check_hash("root", root)
    index = _check_size("leaf index", index)
    tree_size = _check_size("tree size", tree_size)
    path = _check_proof(proof)
    # 1. leaf_index must be < tree_size.
    if index >= tree_size:
        raise ProofInvalid(f"leaf index {index} is not inside a tree of {tree_size} leaves")
    # 2. fn = leaf_index, sn = tree_size - 1.
    fn, sn = index, tree_size - 1
    # 3. r = hash.
    r = leaf
    # 4. For each p in the inclusion path:
    for p in path:
        # 4a. sn == 0 here means the proof is too long.
        if sn == 0:
            raise ProofInvalid(f"inclusion proof for leaf {index} of {tree_size} is too long")
        # 4b. LSB(fn) set or fn == sn: p is a left sibling.
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # 4b.2 skip levels where this node has no right sibling.
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        # 4c.
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 (proof not too short) and r must equal the root.
    if sn != 0:
        raise ProofInvalid(f"inclusion proof for leaf {index} of {tree_size} is too short")
    if not hmac.compare_digest(r, expected):
        raise ProofInvalid(
            f"inclusion proof for leaf {index} of {tree_size} leads to root {r.hex()}, "
            f"expected {expected.hex()}"
        )
    return leaf


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> bytes:
    """Check that the tree of ``size1`` with ``root1`` is a prefix of ``size2`` with ``root2``.

    RFC 9162 §2.1.4.2 for 0 < size1 < size2; strict edge cases (module docstring).
    Returns the verified ``root2``; raises ProofInvalid.
    """
    first = _check_size("first tree size", size1)
    second = _check_size("second tree size", size2)
    r1 = _check_hash("first root", root1)
    r2 = _check_hash("second root", root2)
    path = _check_proof(proof)
    if first > second:
        raise ProofInvalid(f"tree size went backwards: {first} -> {second}")
    if first == 0:
        if path:
            raise ProofInvalid("a consistency proof from the empty tree must be empty")
        if not hmac.compare_digest(r1, EMPTY_ROOT):
            raise ProofInvalid(f"the empty tree's root is {EMPTY_ROOT.hex()}, got {r1.hex()}")
        if second == 0 and not hmac.compare_digest(r2, EMPTY_ROOT):
            raise ProofInvalid(f"the empty tree's root is {EMPTY_ROOT.hex()}, got {r2.hex()}")
        return r2
    if first == second:
        if path:
            raise ProofInvalid(f"a consistency proof between equal sizes ({first}) must be empty")
        if not hmac.compare_digest(r1, r2):
            raise ProofInvalid(f"two roots for tree size {first}: {r1.hex()} != {r2.hex()}")
        return r2
    # 0 < first < second from here.
    # 1. An empty proof fails.
    if not path:
        raise ProofInvalid(f"empty consistency proof for {first} -> {second}")
    # 2. If first is an exact power of 2, prepend first_hash.
    if first & (first - 1) == 0:
        path = [r1, *path]
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, right-shift both until it is not.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first value of the path.
    fr = sr = path[0]
    # 6. For each subsequent value c:
    for c in path[1:]:
        # 6a. sn == 0 here means the proof is too long.
        if sn == 0:
            raise ProofInvalid(f"consistency proof for {first} -> {second} is too long")
        # 6b. LSB(fn) set or fn == sn: c is a left sibling of both paths.
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # c only exists in the second tree.
            sr = node_hash(sr, c)
        # 6c.
        fn >>= 1
        sn >>= 1
    # 7. sn must be 0, fr must be first_hash, sr must be second_hash.
    if sn != 0:
        raise ProofInvalid(f"consistency proof for {first} -> {second} is too short")
    if not hmac.compare_digest(fr, r1):
        raise ProofInvalid(
            f"consistency proof {first} -> {second} leads to first root {fr.hex()}, "
            f"expected {r1.hex()}"
        )
    if not hmac.compare_digest(sr, r2):
        raise ProofInvalid(
            f"consistency proof {first} -> {second} leads to second root {sr.hex()}, "
            f"expected {r2.hex()}"
        )
    return r2
