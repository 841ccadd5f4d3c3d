"""The offline audit pack: selected events, the checkpoint chain over them, proofs.

The pack is JSON lines (``PackWriter`` streams it; ``dump_export`` writes a whole
dict), each line one JSON object with sorted keys, ASCII only, so it is written and
verified in bounded memory whatever its size::

    line 1:     {"format": "l7.ledger.export", "version": 3,
                 "origin": "<the log's origin>",
                 "checkpoints": ["<checkpoint signed note, cosignature lines included>", ...],
                        # a consecutive segment of the chain, oldest first; the last
                        # one (the anchor) covers every event in the pack
                 "consistency_proofs": [["<hex node>", ...], ...]}
                        # entry i proves checkpoints[i] a prefix of checkpoints[i+1]
    one per event, in global order:
                {"global_seq", "sequence", "prev_hash", "hash",
                 "body",              # the stored JCS body text, exactly
                 "inclusion_proof"}   # hex nodes, leaf-side first, against the anchor
    last line:  {"verification": {"result": "verified", "events", "streams", "tree_size",
                                  "streams_from_genesis", "checkpoints", "first_checkpoint"}}

In memory (``build_export``, ``SqlLedger.export``) the same pack is one dict with the
header fields, ``events`` (the list) and ``verification``.

The segment starts at the newest checkpoint made before the first exported event (or
at checkpoint 0), so it shows every checkpoint signed while these events were written.
``docs/ledger-format.md`` specifies every byte.

``verify_export(doc, public_key_raw, witness_keys=...)`` needs nothing else. In order:

1. the document's form: exactly these lines, fields and types, lower-case hex, no
   duplicate JSON keys, no NaN, integers where integers belong   -> ProofInvalid
2. every checkpoint note parses, is for ``origin``, and its log signature verifies
                                                                -> ``checkpoint_signature``
3. the checkpoints are consecutive (``l7.index`` + 1, ``l7.prev`` naming the one
   before)                                  -> ``checkpoint_missing`` / ``checkpoint_chain_broken``
4. each consistency proof verifies between its two checkpoints -> ``checkpoint_inconsistent``
5. cosignatures by the given witness keys verify (others are ignored), and each given
   witness cosigned the anchor          -> ``cosignature_invalid`` / ``unwitnessed_events``
6. events in strictly increasing global_seq                     -> ``global_order``
7. each event: sha256(prev_hash || body) == hash                -> ``hash_mismatch``;
   the body is a JSON object with exactly the event fields      -> ``body_mismatch``
8. each stream's continuity inside the pack: consecutive events have consecutive
   ``sequence`` and link by ``prev_hash``                      -> ``sequence_gap`` /
   ``chain_break``. A stream's first event in the pack is either sequence 1 with
   the genesis prev_hash, or starts mid-stream with a non-genesis prev_hash.
9. each event's inclusion proof (leaf = event hash, index = global_seq - 1) against
   the anchor's root                                            -> ``inclusion_proof``
10. the ``verification`` block equals what steps 1-9 found      -> ProofInvalid

Failures are IntegrityViolation naming the event, except form errors (ProofInvalid).

What an offline verifier cannot know: whether a stream has events *after* the
last one in the pack (or after the anchor), and, for a stream that starts
mid-stream, that its first ``sequence`` number is right: the pack links to the
earlier events by prev_hash only. ``streams_from_genesis`` lists the streams whose
every event from sequence 1 is in the pack; export whole streams for full proof.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO

from ledger.canonical import BODY_FIELDS
from ledger.checkpoint import Checkpoint, check_chain, parse_json_strict, verify_checkpoint
from ledger.errors import IntegrityViolation
from ledger.interface import GENESIS_HASH
from ledger.merkle import (
    MerkleTree,
    ProofInvalid,
    event_leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger.note import Cosignature, VerifierKey, verify_cosignature
from ledger.verify import VerifyRow

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "MAX_LINE_BYTES",
    "ExportReport",
    "PackChecker",
    "PackWriter",
    "assemble_export",
    "build_export",
    "dump_export",
    "pack_event",
    "pack_header",
    "verify_export",
    "verify_export_file",
]

EXPORT_FORMAT = "l7.ledger.export"
EXPORT_VERSION = 3
_DOC_FIELDS = frozenset(
    {"format", "version", "origin", "checkpoints", "consistency_proofs", "events", "verification"}
)
_EVENT_FIELDS = frozenset(
    {"global_seq", "sequence", "prev_hash", "hash", "body", "inclusion_proof"}
)
_VERIFICATION_FIELDS = frozenset(
    {
        "result",
        "events",
        "streams",
        "tree_size",
        "streams_from_genesis",
        "checkpoints",
        "first_checkpoint",
    }
)
_MAX_CHECKPOINTS = 10_000_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_PROOF = 64  # a tree of 2**53 leaves has proofs of at most 53 nodes


@dataclass(frozen=True)
class ExportReport:
    """What a verified audit pack proves."""

    events: int
    streams: int
    checkpoint: Checkpoint
    """The anchor: the newest checkpoint, which covers every event of the pack."""
    decision_ids: tuple[str, ...]
    streams_from_genesis: tuple[str, ...]
    """Streams present from sequence 1 (the others start mid-stream)."""
    chain: tuple[Checkpoint, ...] = ()
    cosigned_by: tuple[str, ...] = ()
    """Key ids of the given witnesses, every one of which cosigned the anchor."""

    @property
    def tree_size(self) -> int:
        return self.checkpoint.tree_size

    @property
    def root_hash(self) -> str:
        return self.checkpoint.root_hash


def _violation(
    what: str, where: tuple[str, int, int], expected: str, actual: str
) -> IntegrityViolation:
    """IntegrityViolation at ``where`` = (decision_id, sequence, global_seq)."""
    did, seq, g = where
    return IntegrityViolation(
        what, decision_id=did, sequence=seq, global_seq=g, expected=expected, actual=actual
    )


def _int(where: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ProofInvalid(f"{where} must be an integer >= {minimum}, got {value!r:.40}")
    return value


def _hex(where: str, value: object) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ProofInvalid(f"{where} must be 64 lower-case hex digits, got {value!r:.80}")
    return value


def _fields(where: str, obj: object, fields: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise ProofInvalid(f"{where} must be a JSON object, got {type(obj).__name__}")
    if obj.keys() != fields:
        extra, missing = sorted(obj.keys() - fields), sorted(fields - obj.keys())
        raise ProofInvalid(f"{where}: missing fields {missing}, unknown fields {extra}")
    return obj


@dataclass(frozen=True)
class _Event:
    global_seq: int
    sequence: int
    prev_hash: str
    hash: str
    body: str
    proof: tuple[bytes, ...]


def _parse_event(i: int, obj: object) -> _Event:
    where = f"events[{i}]"
    e = _fields(where, obj, _EVENT_FIELDS)
    proof = e["inclusion_proof"]
    if not isinstance(proof, list) or len(proof) > _MAX_PROOF:
        raise ProofInvalid(f"{where}.inclusion_proof must be a list of at most {_MAX_PROOF}")
    if not isinstance(e["body"], str):
        raise ProofInvalid(f"{where}.body must be a string")
    return _Event(
        global_seq=_int(f"{where}.global_seq", e["global_seq"], 1),
        sequence=_int(f"{where}.sequence", e["sequence"], 1),
        prev_hash=_hex(f"{where}.prev_hash", e["prev_hash"]),
        hash=_hex(f"{where}.hash", e["hash"]),
        body=e["body"],
        proof=tuple(
            bytes.fromhex(_hex(f"{where}.inclusion_proof[{j}]", p)) for j, p in enumerate(proof)
        ),
    )


def _decision_id(body: str) -> str | None:
    """The body's decision_id if it is a well-formed event body, else None."""
    try:
        parsed = parse_json_strict(body)
    except ProofInvalid:
        return None
    if not isinstance(parsed, dict) or parsed.keys() != BODY_FIELDS:
        return None
    did = parsed["decision_id"]
    return did if isinstance(did, str) and did else None


def _chain(
    doc: Mapping[str, Any],
) -> tuple[str, list[Checkpoint], list[list[Cosignature]], list[list[bytes]]]:
    """Step 1 for the checkpoints and proofs: parsed, nothing verified yet."""
    origin = doc.get("origin")
    if not isinstance(origin, str):
        raise ProofInvalid("origin must be a string")
    notes = doc.get("checkpoints")
    if not isinstance(notes, list) or not 1 <= len(notes) <= _MAX_CHECKPOINTS:
        raise ProofInvalid("checkpoints must be a non-empty list of signed notes")
    chain: list[Checkpoint] = []
    cosigs: list[list[Cosignature]] = []
    for i, note in enumerate(notes):
        if not isinstance(note, str):
            raise ProofInvalid(f"checkpoints[{i}] must be a signed note (a string)")
        try:
            cp, cs = Checkpoint.decode_cosigned(note)
        except ProofInvalid as e:
            raise ProofInvalid(f"checkpoints[{i}]: {e}") from e
        chain.append(cp)
        cosigs.append(cs)
    proofs_raw = doc.get("consistency_proofs")
    if not isinstance(proofs_raw, list) or len(proofs_raw) != len(chain) - 1:
        raise ProofInvalid(
            f"consistency_proofs must be a list of {len(chain) - 1} proofs (one per pair of "
            "consecutive checkpoints)"
        )
    proofs: list[list[bytes]] = []
    for i, p in enumerate(proofs_raw):
        if not isinstance(p, list) or len(p) > _MAX_PROOF:
            raise ProofInvalid(f"consistency_proofs[{i}] must be a list of at most {_MAX_PROOF}")
        proofs.append(
            [bytes.fromhex(_hex(f"consistency_proofs[{i}][{j}]", h)) for j, h in enumerate(p)]
        )
    return origin, chain, cosigs, proofs


class PackChecker:
    """Steps 1-9 of the module docstring, one piece at a time, in bounded memory: the
    header (``header``), then each event (``event``), then ``report``. Memory grows only
    with the number of streams (their heads), never with the number of events.
    Signatures are checked only if ``public_key_raw`` is given."""

    def __init__(
        self, public_key_raw: bytes | None, witness_keys: Sequence[VerifierKey] = ()
    ) -> None:
        self._pub = public_key_raw
        self._witness_keys = tuple(witness_keys)
        self._chain: list[Checkpoint] = []
        self._anchored: set[str] = set()
        self._heads: dict[str, tuple[int, str]] = {}
        self._from_genesis: set[str] = set()
        self._last_g = 0
        self._events = 0

    @property
    def anchor(self) -> Checkpoint:
        if not self._chain:
            raise ProofInvalid("the pack's header (format, origin, checkpoints) comes first")
        return self._chain[-1]

    @property
    def last_global_seq(self) -> int:
        return self._last_g

    def header(self, doc: Mapping[str, Any]) -> None:
        """Steps 1-5 over the header fields (format, version, origin, checkpoints,
        consistency_proofs) of ``doc``."""
        if self._chain:
            raise ProofInvalid("a pack has exactly one header")
        # 1. Form of the envelope and the checkpoints.
        if doc.get("format") != EXPORT_FORMAT or type(doc.get("version")) is not int:
            raise ProofInvalid(f"not an {EXPORT_FORMAT} document")
        if doc["version"] != EXPORT_VERSION:
            raise ProofInvalid(
                f"{EXPORT_FORMAT} version {doc['version']} is not supported (this verifier "
                f"reads version {EXPORT_VERSION}); export the pack again with this release"
            )
        origin, chain, cosigs, proofs = _chain(doc)
        cp = chain[-1]
        for c in chain:
            # 2. Each checkpoint is the log's, signed.
            if c.origin != origin:
                raise ProofInvalid(f"checkpoint {c.index} is for log {c.origin!r}, not {origin!r}")
            if self._pub is not None:
                try:
                    verify_checkpoint(c, self._pub, origin=origin)
                except ProofInvalid as e:
                    raise _violation(
                        "checkpoint_signature",
                        ("-", 0, c.tree_size),
                        f"a valid log signature on checkpoint {c.index}",
                        str(e),
                    ) from e
        for i in range(1, len(chain)):
            prev, c = chain[i - 1], chain[i]
            # 3. Consecutive.
            check_chain(prev, c, "export pack")
            # 4. Consistent.
            try:
                verify_consistency(prev.tree_size, c.tree_size, prev.root, c.root, proofs[i - 1])
            except ProofInvalid as e:
                raise _violation(
                    "checkpoint_inconsistent",
                    ("-", 0, c.tree_size),
                    f"checkpoint {prev.index} (tree_size {prev.tree_size}) to be a prefix of "
                    f"checkpoint {c.index} (tree_size {c.tree_size})",
                    str(e),
                ) from e
        # 5. Cosignatures by the given witnesses (one naming a given witness must be by its
        #    key); each of them cosigned the anchor.
        keys = {k.name: k for k in self._witness_keys}
        anchored: set[str] = set()
        for c, cs in zip(chain, cosigs, strict=True):
            for sig in cs:
                key = keys.get(sig.name)
                if key is None:
                    continue  # an unknown witness: ignored (C2SP)
                try:
                    verify_cosignature(c.body, sig, key)
                except ProofInvalid as e:
                    raise _violation(
                        "cosignature_invalid",
                        ("-", 0, c.tree_size),
                        f"a valid cosignature by {key.key_id} on checkpoint {c.index}",
                        str(e),
                    ) from e
                if c is cp:
                    anchored.add(key.key_id)
        missing = sorted({k.key_id for k in self._witness_keys} - anchored)
        if missing:
            raise _violation(
                "unwitnessed_events",
                ("-", 0, cp.tree_size),
                f"the anchor checkpoint {cp.index} (tree_size {cp.tree_size}) cosigned by "
                f"{missing}",
                "no such cosignature in the pack: its events are not witnessed",
            )
        self._chain = chain
        self._anchored = anchored

    def event(self, i: int, obj: object) -> None:
        """Steps 1 and 6-9 for event ``i`` of the pack."""
        cp = self.anchor
        ev = _parse_event(i, obj)
        g = ev.global_seq
        # 6. Global order.
        if g <= self._last_g:
            raise _violation(
                "global_order",
                ("-", ev.sequence, g),
                f"global_seq > {self._last_g}",
                f"global_seq {g}",
            )
        self._last_g = g
        # 7. Chain hash over the body as given, then the body's form.
        did = _decision_id(ev.body) or "?"
        try:
            data = ev.prev_hash.encode("ascii") + ev.body.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _violation(
                "hash_mismatch", (did, ev.sequence, g), "a UTF-8 encodable body", repr(e)
            ) from e
        recomputed = hashlib.sha256(data).hexdigest()
        if recomputed != ev.hash:
            raise _violation(
                "hash_mismatch", (did, ev.sequence, g), f"hash {recomputed}", f"{ev.hash}"
            )
        if did == "?":
            raise _violation(
                "body_mismatch",
                (did, ev.sequence, g),
                f"a body with fields {sorted(BODY_FIELDS)}",
                f"{ev.body:.80}",
            )
        # 8. Stream continuity inside the pack.
        head = self._heads.get(did)
        if head is None:
            if ev.sequence == 1 and ev.prev_hash != GENESIS_HASH:
                raise _violation(
                    "chain_break", (did, 1, g), f"prev_hash {GENESIS_HASH}", ev.prev_hash
                )
            if ev.sequence > 1 and ev.prev_hash == GENESIS_HASH:
                raise _violation(
                    "chain_break",
                    (did, ev.sequence, g),
                    "the hash of the preceding event (stream starts mid-stream)",
                    ev.prev_hash,
                )
            if ev.sequence == 1:
                self._from_genesis.add(did)
        else:
            last_seq, last_hash = head
            if ev.sequence != last_seq + 1:
                raise _violation(
                    "sequence_gap",
                    (did, ev.sequence, g),
                    f"sequence {last_seq + 1}",
                    f"{ev.sequence}",
                )
            if ev.prev_hash != last_hash:
                raise _violation(
                    "chain_break", (did, ev.sequence, g), f"prev_hash {last_hash}", ev.prev_hash
                )
        self._heads[did] = (ev.sequence, ev.hash)
        # 9. Inclusion in the signed tree.
        try:
            verify_inclusion(event_leaf_hash(ev.hash), g - 1, cp.tree_size, ev.proof, cp.root)
        except ProofInvalid as e:
            raise _violation(
                "inclusion_proof",
                (did, ev.sequence, g),
                f"inclusion in the checkpoint tree of {cp.tree_size} (root {cp.root_hash})",
                str(e),
            ) from e
        self._events += 1

    def report(self) -> ExportReport:
        """What the pack proved so far (ProofInvalid if it holds no event)."""
        cp = self.anchor
        if not self._events:
            raise ProofInvalid("events must be a non-empty list")
        return ExportReport(
            events=self._events,
            streams=len(self._heads),
            checkpoint=cp,
            decision_ids=tuple(self._heads),
            streams_from_genesis=tuple(sorted(self._from_genesis)),
            chain=tuple(self._chain),
            cosigned_by=tuple(sorted(self._anchored)),
        )


def _check(
    doc: Mapping[str, Any],
    public_key_raw: bytes | None,
    witness_keys: Sequence[VerifierKey] = (),
) -> ExportReport:
    """Steps 1-9 of the module docstring over a whole document (a dict)."""
    checker = PackChecker(public_key_raw, witness_keys)
    checker.header(doc)
    raw_events = doc.get("events")
    if not isinstance(raw_events, list) or not raw_events:
        raise ProofInvalid("events must be a non-empty list")
    for i, e in enumerate(raw_events):
        checker.event(i, e)
    return checker.report()


def _verification_block(report: ExportReport) -> dict[str, Any]:
    return {
        "result": "verified",
        "events": report.events,
        "streams": report.streams,
        "tree_size": report.tree_size,
        "streams_from_genesis": list(report.streams_from_genesis),
        "checkpoints": len(report.chain),
        "first_checkpoint": report.chain[0].index,
    }


def _check_verification(claimed_obj: object, report: ExportReport) -> None:
    """Step 10: the recorded verification result is the one just computed."""
    claimed = _fields("verification", claimed_obj, _VERIFICATION_FIELDS)
    if dict(claimed) != _verification_block(report) or any(
        type(claimed[k]) is not int
        for k in ("events", "streams", "tree_size", "checkpoints", "first_checkpoint")
    ):
        raise ProofInvalid(
            f"the pack's verification block {dict(claimed)!r:.200} does not match the "
            f"verified contents {_verification_block(report)!r}"
        )


# -- building a pack --------------------------------------------------------------------------


def _tree(hashes: Sequence[str] | MerkleTree) -> MerkleTree:
    return hashes if isinstance(hashes, MerkleTree) else MerkleTree.from_event_hashes(hashes)


def pack_header(
    tree: MerkleTree,
    chain: Sequence[Checkpoint],
    cosignatures: Mapping[int, Sequence[Cosignature]] | None = None,
) -> dict[str, Any]:
    """The header of a pack against the consecutive ``chain`` segment (its last checkpoint
    is the anchor): format, version, origin, the checkpoint notes with the
    ``cosignatures`` (per index) and the consistency proofs between them, from ``tree``
    (the whole log's, or at least the anchor's prefix). IntegrityViolation if the tree
    does not give the checkpoints' roots."""
    if not chain:
        raise ValueError("an export needs at least one checkpoint")
    anchor = chain[-1]
    if tree.size < anchor.tree_size:
        raise _violation(
            "truncated",
            ("-", 0, tree.size + 1),
            f"at least {anchor.tree_size} events",
            f"{tree.size} events",
        )
    for c in chain:
        if tree.root(c.tree_size) != c.root:
            raise _violation(
                "checkpoint_root_mismatch",
                ("-", 0, 1),
                f"root {c.root_hash} (checkpoint {c.index})",
                f"root {tree.root(c.tree_size).hex()} over the log's first {c.tree_size} events",
            )
    cos = cosignatures or {}
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "origin": anchor.origin,
        "checkpoints": [c.encode(cos.get(c.index, ())) for c in chain],
        "consistency_proofs": [
            [p.hex() for p in tree.consistency_proof(a.tree_size, b.tree_size)]
            for a, b in pairwise(chain)
        ],
    }


def pack_event(raw: tuple[Any, ...], tree: MerkleTree, size: int) -> dict[str, Any]:
    """One event of a pack anchored at tree ``size``, from a ``VerifyRow`` tuple, with its
    inclusion proof; IntegrityViolation if the row's hash is not the log's leaf there."""
    row = VerifyRow(*raw)
    g = row.global_seq
    if not 1 <= g <= size:
        raise ValueError(
            f"event global_seq {g} is not covered by the checkpoint (tree_size {size}); "
            "sign a newer checkpoint first"
        )
    if event_leaf_hash(row.hash) != tree.leaf(g - 1):
        raise _violation(
            "hash_mismatch",
            (row.decision_id, row.sequence, g),
            "the same hash as the log at this global_seq",
            row.hash,
        )
    body = row.body.decode("utf-8") if isinstance(row.body, bytes) else row.body
    return {
        "global_seq": g,
        "sequence": row.sequence,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
        "body": body,
        "inclusion_proof": [p.hex() for p in tree.inclusion_proof(g - 1, size)],
    }


def build_export(
    rows_for_selection: Iterable[tuple[Any, ...]],
    all_event_hashes_in_global_order: Sequence[str] | MerkleTree,
    chain: Sequence[Checkpoint],
    cosignatures: Mapping[int, Sequence[Cosignature]] | None = None,
    *,
    public_key_raw: bytes | None = None,
) -> dict[str, Any]:
    """The audit pack, as one dict, for the selected rows (``VerifyRow`` tuples in global
    order; each stream contiguous) against a consecutive ``chain`` segment whose last
    checkpoint covers them, with the ``cosignatures`` of those checkpoints (per index).
    For packs of any size, stream them with ``PackWriter`` (``pack_header`` and
    ``pack_event``) instead.

    ``all_event_hashes_in_global_order`` is every event hash of the ledger (or a
    ``MerkleTree`` already built over them); its prefixes must give the signed roots.
    With ``public_key_raw`` the signatures are checked here too. Raises
    IntegrityViolation if the rows, the log and the checkpoints disagree.
    """
    if not chain:
        raise ValueError("an export needs at least one checkpoint")
    tree = _tree(all_event_hashes_in_global_order)
    doc = pack_header(tree, chain, cosignatures)
    size = chain[-1].tree_size
    doc["events"] = [pack_event(raw, tree, size) for raw in rows_for_selection]
    doc["verification"] = _verification_block(_check(doc, public_key_raw))
    return doc


def assemble_export(
    header: Mapping[str, Any],
    events: Iterable[Mapping[str, Any]],
    *,
    public_key_raw: bytes | None = None,
) -> dict[str, Any]:
    """The pack as one dict from ``pack_header`` and ``pack_event`` pieces, checked
    (steps 1-9) and given its verification block."""
    doc = {k: header[k] for k in _HEADER_FIELDS}
    doc["events"] = [dict(e) for e in events]
    doc["verification"] = _verification_block(_check(doc, public_key_raw))
    return doc


# -- the file layout: JSON lines --------------------------------------------------------------

MAX_LINE_BYTES = 64 * 1024 * 1024
"""The longest line a verifier reads (an event's body is far smaller)."""
_HEADER_FIELDS = frozenset({"format", "version", "origin", "checkpoints", "consistency_proofs"})
_TRAILER_FIELDS = frozenset({"verification"})


def _line(obj: Mapping[str, Any]) -> bytes:
    return (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        + b"\n"
    )


class PackWriter:
    """Writes a pack to ``out`` as it is produced, checking it as it goes (``PackChecker``,
    with the log key if given), so a pack that would not verify is never completed:
    ``header(doc)`` once, ``event(ev)`` per event in global order, then ``finish()``
    writes the verification block and returns the report. Memory: one event at a time
    plus the checker's stream heads."""

    def __init__(self, out: BinaryIO, *, public_key_raw: bytes | None = None) -> None:
        self._out = out
        self._checker = PackChecker(public_key_raw)
        self._header: dict[str, Any] | None = None
        self.events = 0

    @property
    def last_global_seq(self) -> int:
        """The global_seq of the last event written (0 before the first): the cursor to
        resume an interrupted export from."""
        return self._checker.last_global_seq

    @property
    def header_fields(self) -> Mapping[str, Any] | None:
        return self._header

    @property
    def anchor_tree_size(self) -> int:
        return self._checker.anchor.tree_size

    def header(self, doc: Mapping[str, Any]) -> None:
        head = {k: doc[k] for k in _HEADER_FIELDS if k in doc}
        self._checker.header(_fields("header", head, _HEADER_FIELDS))
        self._out.write(_line(head))
        self._header = head

    def event(self, ev: Mapping[str, Any]) -> None:
        self._checker.event(self.events, ev)
        self._out.write(_line(ev))
        self.events += 1

    def finish(self) -> ExportReport:
        report = self._checker.report()
        self._out.write(_line({"verification": _verification_block(report)}))
        self._out.flush()
        return report


def dump_export(doc: Mapping[str, Any]) -> bytes:
    """The document as written to a file: JSON lines (header, one line per event, the
    verification block), keys sorted, ASCII only (``docs/ledger-format.md``)."""
    out = [_line({k: doc[k] for k in _HEADER_FIELDS})]
    out += [_line(ev) for ev in doc["events"]]
    out.append(_line({"verification": doc["verification"]}))
    return b"".join(out)


def _verify_lines(
    lines: Iterator[bytes], public_key_raw: bytes, witness_keys: Sequence[VerifierKey]
) -> ExportReport:
    checker = PackChecker(public_key_raw, witness_keys)
    n = 0

    def next_obj(what: str) -> Mapping[str, Any]:
        nonlocal n
        line = next(lines, None)
        if line is None:
            raise ProofInvalid(f"the pack ends before its {what} (line {n + 1})")
        n += 1
        if not line.endswith(b"\n") or len(line) > MAX_LINE_BYTES:
            raise ProofInvalid(
                f"line {n} is not a complete line of at most {MAX_LINE_BYTES} bytes (a "
                "truncated pack?)"
            )
        obj = parse_json_strict(line)
        if not isinstance(obj, dict):
            raise ProofInvalid(f"line {n} must be a JSON object")
        return obj

    # 1. The header line: exactly the header fields.
    checker.header(_fields("header (line 1)", next_obj("header"), _HEADER_FIELDS))
    i = 0
    while True:
        obj = next_obj("verification block")
        if obj.keys() == _TRAILER_FIELDS:
            break
        checker.event(i, obj)
        i += 1
    report = checker.report()
    # 10. The verification block, and nothing after it.
    _check_verification(obj["verification"], report)
    if next(lines, None) is not None:
        raise ProofInvalid(f"the pack goes on after its verification block (line {n})")
    return report


def _bounded_lines(fp: BinaryIO) -> Iterator[bytes]:
    while True:
        line = fp.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        yield line


def verify_export(
    doc: Mapping[str, Any] | bytes | str,
    public_key_raw: bytes,
    *,
    witness_keys: Sequence[VerifierKey] = (),
) -> ExportReport:
    """Verify an audit pack offline with only the log's public key and, if given, the
    witnesses' keys, each of which must have cosigned the anchor (module docstring).

    ``doc`` is the parsed document (a dict, as ``build_export`` returns) or the pack's
    text (JSON lines, each parsed strictly). Returns what was proven; raises
    IntegrityViolation for a failed check, ProofInvalid for a malformed pack.
    """
    if isinstance(doc, bytes | str):
        data = doc.encode("utf-8") if isinstance(doc, str) else doc
        return _verify_lines(iter(data.splitlines(keepends=True)), public_key_raw, witness_keys)
    parsed = dict(doc)
    # 1. Envelope fields.
    envelope = _fields("export", parsed, _DOC_FIELDS)
    # 1-9.
    report = _check(envelope, public_key_raw, witness_keys)
    # 10.
    _check_verification(envelope["verification"], report)
    return report


def verify_export_file(
    path: str | Path,
    public_key_raw: bytes,
    *,
    witness_keys: Sequence[VerifierKey] = (),
) -> ExportReport:
    """``verify_export`` reading the pack file line by line: memory stays bounded by the
    longest line and the number of streams, whatever the number of events."""
    with open(path, "rb") as fp:
        return _verify_lines(_bounded_lines(fp), public_key_raw, witness_keys)
