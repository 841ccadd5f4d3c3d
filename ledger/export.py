"""The offline audit pack: selected events + a signed checkpoint + inclusion proofs.

One JSON document (``dump_export`` writes it; keys sorted, ASCII only)::

    {"format": "l7.ledger.export", "version": 1,
     "checkpoint": {"tree_size", "root_hash", "timestamp", "key_id", "signature"},
     "events": [{"global_seq", "sequence", "prev_hash", "hash",
                 "body",              # the stored JCS body text, exactly
                 "inclusion_proof"}], # hex nodes, leaf-side first, against the checkpoint
     "verification": {"result": "verified", "events", "streams", "tree_size",
                      "streams_from_genesis"}}

``verify_export(doc, public_key_raw)`` needs nothing else. It checks, in order:

1. the document's form: exactly these fields and types, lower-case hex, no
   duplicate JSON keys, no NaN, integers where integers belong   -> ProofInvalid
2. the checkpoint signature                                     -> ``checkpoint_signature``
3. events in strictly increasing global_seq                     -> ``global_order``
4. each event: sha256(prev_hash || body) == hash                -> ``hash_mismatch``;
   the body is a JSON object with exactly the event fields      -> ``body_mismatch``
5. each stream's continuity inside the pack: consecutive events have consecutive
   ``sequence`` and link by ``prev_hash``                      -> ``sequence_gap`` /
   ``chain_break``. A stream's first event in the pack is either sequence 1 with
   the genesis prev_hash, or starts mid-stream with a non-genesis prev_hash.
6. each event's inclusion proof (leaf = event hash, index = global_seq - 1) against
   the checkpoint root                                          -> ``inclusion_proof``
7. the ``verification`` block equals what steps 1-6 found        -> ProofInvalid

Failures are IntegrityViolation naming the event, except form errors (ProofInvalid).

What an offline verifier cannot know: whether a stream has events *after* the
last one in the pack (or after the checkpoint), and, for a stream that starts
mid-stream, that its first ``sequence`` number is right: the pack links to the
earlier events by prev_hash only. ``streams_from_genesis`` lists the streams whose
every event from sequence 1 is in the pack; export whole streams for full proof.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.canonical import BODY_FIELDS
from ledger.checkpoint import Checkpoint, parse_json_strict, verify_checkpoint
from ledger.errors import IntegrityViolation
from ledger.interface import GENESIS_HASH
from ledger.merkle import MerkleTree, ProofInvalid, event_leaf_hash, verify_inclusion
from ledger.verify import VerifyRow

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "ExportReport",
    "build_export",
    "dump_export",
    "verify_export",
]

EXPORT_FORMAT = "l7.ledger.export"
EXPORT_VERSION = 1
_DOC_FIELDS = frozenset({"format", "version", "checkpoint", "events", "verification"})
_EVENT_FIELDS = frozenset(
    {"global_seq", "sequence", "prev_hash", "hash", "body", "inclusion_proof"}
)
_VERIFICATION_FIELDS = frozenset(
    {"result", "events", "streams", "tree_size", "streams_from_genesis"}
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_PROOF = 64  # a tree of 2**53 leaves has proofs of at most 53 nodes


@dataclass(frozen=True)
class ExportReport:
    """What a verified audit pack proves."""

    events: int
    streams: int
    checkpoint: Checkpoint
    decision_ids: tuple[str, ...]
    streams_from_genesis: tuple[str, ...]
    """Streams present from sequence 1 (the others start mid-stream)."""

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


def _check(doc: Mapping[str, Any], public_key_raw: bytes | None) -> ExportReport:
    """Steps 1-6 of the module docstring (signature only if a key is given)."""
    # 1. Form of the envelope and the checkpoint.
    if doc.get("format") != EXPORT_FORMAT or type(doc.get("version")) is not int:
        raise ProofInvalid(f"not an {EXPORT_FORMAT} document")
    if doc["version"] != EXPORT_VERSION:
        raise ProofInvalid(f"{EXPORT_FORMAT} version {doc['version']} is not supported")
    cp = Checkpoint.from_dict(doc.get("checkpoint"))
    raw_events = doc.get("events")
    if not isinstance(raw_events, list) or not raw_events:
        raise ProofInvalid("events must be a non-empty list")
    events = [_parse_event(i, e) for i, e in enumerate(raw_events)]
    # 2. The checkpoint signature.
    if public_key_raw is not None:
        try:
            verify_checkpoint(cp, public_key_raw)
        except ProofInvalid as e:
            raise _violation(
                "checkpoint_signature",
                ("-", 0, cp.tree_size),
                "a valid checkpoint signature",
                str(e),
            ) from e
    root = cp.root
    heads: dict[str, tuple[int, str]] = {}
    from_genesis: set[str] = set()
    last_g = 0
    for ev in events:
        g = ev.global_seq
        # 3. Global order.
        if g <= last_g:
            raise _violation(
                "global_order", ("-", ev.sequence, g), f"global_seq > {last_g}", f"global_seq {g}"
            )
        last_g = g
        # 4. Chain hash over the body as given, then the body's form.
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
        # 5. Stream continuity inside the pack.
        head = heads.get(did)
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
                from_genesis.add(did)
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
        heads[did] = (ev.sequence, ev.hash)
        # 6. Inclusion in the signed tree.
        try:
            verify_inclusion(event_leaf_hash(ev.hash), g - 1, cp.tree_size, ev.proof, root)
        except ProofInvalid as e:
            raise _violation(
                "inclusion_proof",
                (did, ev.sequence, g),
                f"inclusion in the checkpoint tree of {cp.tree_size} (root {cp.root_hash})",
                str(e),
            ) from e
    return ExportReport(
        events=len(events),
        streams=len(heads),
        checkpoint=cp,
        decision_ids=tuple(heads),
        streams_from_genesis=tuple(sorted(from_genesis)),
    )


def _verification_block(report: ExportReport) -> dict[str, Any]:
    return {
        "result": "verified",
        "events": report.events,
        "streams": report.streams,
        "tree_size": report.tree_size,
        "streams_from_genesis": list(report.streams_from_genesis),
    }


def build_export(
    rows_for_selection: Iterable[tuple[Any, ...]],
    all_event_hashes_in_global_order: Sequence[str] | MerkleTree,
    checkpoint: Checkpoint,
    *,
    public_key_raw: bytes | None = None,
) -> dict[str, Any]:
    """The audit pack for the selected rows (``VerifyRow`` tuples in global order; each
    stream contiguous) against ``checkpoint``, which must cover them.

    ``all_event_hashes_in_global_order`` is every event hash of the ledger (or a
    ``MerkleTree`` already built over them); its first ``checkpoint.tree_size`` must give
    the signed root. With ``public_key_raw`` the signature is checked here too.
    Raises IntegrityViolation if the rows, the log and the checkpoint disagree.
    """
    tree = (
        all_event_hashes_in_global_order
        if isinstance(all_event_hashes_in_global_order, MerkleTree)
        else MerkleTree.from_event_hashes(all_event_hashes_in_global_order)
    )
    size = checkpoint.tree_size
    if tree.size < size:
        raise _violation(
            "truncated", ("-", 0, tree.size + 1), f"at least {size} events", f"{tree.size} events"
        )
    if tree.root(size) != checkpoint.root:
        raise _violation(
            "checkpoint_root_mismatch",
            ("-", 0, 1),
            f"root {checkpoint.root_hash}",
            f"root {tree.root(size).hex()} over the log's first {size} events",
        )
    events: list[dict[str, Any]] = []
    for raw in rows_for_selection:
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
        events.append(
            {
                "global_seq": g,
                "sequence": row.sequence,
                "prev_hash": row.prev_hash,
                "hash": row.hash,
                "body": body,
                "inclusion_proof": [p.hex() for p in tree.inclusion_proof(g - 1, size)],
            }
        )
    doc: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "checkpoint": checkpoint.to_dict(),
        "events": events,
    }
    doc["verification"] = _verification_block(_check(doc, public_key_raw))
    return doc


def dump_export(doc: Mapping[str, Any]) -> bytes:
    """The document as written to a file: sorted keys, ASCII, one trailing newline."""
    return json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=True).encode("ascii") + b"\n"


def verify_export(doc: Mapping[str, Any] | bytes | str, public_key_raw: bytes) -> ExportReport:
    """Verify an audit pack offline with only the checkpoint public key (module docstring).

    ``doc`` is the parsed document or its JSON text (parsed strictly). Returns what was
    proven; raises IntegrityViolation for a failed check, ProofInvalid for a malformed pack.
    """
    parsed = parse_json_strict(doc) if isinstance(doc, bytes | str) else dict(doc)
    # 1. Envelope fields.
    envelope = _fields("export", parsed, _DOC_FIELDS)
    # 1-6.
    report = _check(envelope, public_key_raw)
    # 7. The recorded verification result is the one just computed.
    claimed = _fields("verification", envelope["verification"], _VERIFICATION_FIELDS)
    if dict(claimed) != _verification_block(report) or any(
        type(claimed[k]) is not int for k in ("events", "streams", "tree_size")
    ):
        raise ProofInvalid(
            f"the pack's verification block {dict(claimed)!r:.200} does not match the "
            f"verified contents {_verification_block(report)!r}"
        )
    return report
