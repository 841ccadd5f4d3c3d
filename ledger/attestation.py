"""Tier attestations: who wrote an authority-bearing event, proven by a signature.

The hash chain proves order, not authority: a database writer can append a well-hashed
``enforcement.result`` it invented. So every batch a tier (engine, gateway, ledger
service) appends carries, in the same atomic batch, one ``batch.attested`` event per
stream it touches, signed with that tier's key (docs/0012-tier-attestations.md)::

    statement = JCS({"type": "l7.ledger.batch", "version": 1,
                     "decision_id": <stream>, "tier": "engine" | "gateway" | "ledger",
                     "key_id": <pinned key id>,
                     "prev_sequence": <stream sequence before the batch>,
                     "prev_hash": <stream head hash before the batch>,
                     "events": [sha256_hex(JCS(content_i)), ...]})
    content_i = {"event_type", "actor", "policy_version", "payload", "unique_key"}
    signature = "ed25519:<base64url>" | "vault:v<N>:<base64>"   over the statement bytes

``prev_hash`` commits to the whole stream before the batch, so the statement pins the
batch's position; the digests pin what the tier wrote. The ledger assigns ``event_id``
and ``at`` (not signed; the Merkle checkpoints protect them like every other byte).
The ledger places a batch only where its attestation says (``check_placement``): a
stream that moved meanwhile is ``StaleHead`` and the tier signs again.

Readers honour an event of an ``AUTHORITY`` type only when an attestation by a tier in
``OWNERS[type]``, signed by a key pinned for that tier, covers it
(``require_authority``); anything else is ``IntegrityViolation`` naming the event.
This module knows nothing of ``l7``: the keys come in as raw Ed25519 public keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.canonical import canonical_json
from ledger.errors import IntegrityViolation, InvalidEvent, StaleHead
from ledger.interface import GENESIS_HASH, EventType, NewEvent, StoredEvent

__all__ = [
    "ATTESTATION_TYPE",
    "ATTESTATION_VERSION",
    "AUTHORITY",
    "OWNERS",
    "AttestationChecker",
    "Statement",
    "Tier",
    "TierKeys",
    "attestation_event",
    "authorize_batch",
    "check_placement",
    "content_digest",
    "is_authority",
    "new_event_digest",
    "require_authority",
]

ATTESTATION_TYPE = "l7.ledger.batch"
ATTESTATION_VERSION = 1
_A = EventType.BATCH_ATTESTED
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_B64URL_SIG = re.compile(r"ed25519:([A-Za-z0-9_-]{86})")
_TRANSIT_SIG = re.compile(r"vault:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]{86}==)")
_FIELDS = frozenset(
    {"type", "version", "decision_id", "tier", "key_id", "prev_sequence", "prev_hash", "events"}
)
MAX_BATCH_EVENTS = 10_000


class Tier(str, Enum):
    """The processes that write the ledger, each with its own pinned signing key."""

    ENGINE = "engine"
    GATEWAY = "gateway"
    LEDGER = "ledger"


_E = EventType
_ENGINE, _GATEWAY, _LEDGER = (frozenset({t}) for t in Tier)
OWNERS: Mapping[EventType, frozenset[Tier]] = {
    _E.POLICY_ACTIVATED: _ENGINE,
    _E.DECISION_CREATED: _ENGINE,
    _E.DECISION_EVALUATED: _ENGINE,
    _E.POLICY_GATE: _ENGINE,
    _E.RISK_SCORED: _ENGINE,
    _E.AUTHORITY_REQUIRED: _ENGINE,
    _E.APPROVAL_ADDED: _ENGINE,
    _E.APPROVAL_REJECTED: _ENGINE,
    _E.OVERRIDE_BREAKGLASS: _ENGINE,
    _E.BREAKGLASS_REVIEWED: _ENGINE,
    _E.ENFORCEMENT_RESULT: _ENGINE,
    _E.EXECUTION_AUTHORIZED: _GATEWAY,
    _E.EXECUTION_CONFIRMED: _GATEWAY,
    _E.DECISION_EXPIRED: _ENGINE,
    _E.DECISION_CANCELLED: _ENGINE,
    _E.AUTHORITY_ESCALATED: _ENGINE,
    _E.DELEGATION_GRANTED: _ENGINE,
    _E.KEY_REGISTERED: _ENGINE,
    _E.KEY_REVOKED: _ENGINE,
    _E.LEDGER_ACCESSED: frozenset(Tier),
    _E.LEDGER_ACCESSED_BREAKGLASS: frozenset(Tier),
    _E.ANOMALY_DETECTED: frozenset(Tier),
    _E.BATCH_ATTESTED: frozenset(Tier),
}
"""Which tiers may write (and so sign) each event type; the ledger service enforces it."""

AUTHORITY: frozenset[EventType] = frozenset(
    {
        _E.POLICY_ACTIVATED,
        _E.APPROVAL_ADDED,
        _E.APPROVAL_REJECTED,
        _E.OVERRIDE_BREAKGLASS,
        _E.BREAKGLASS_REVIEWED,
        _E.ENFORCEMENT_RESULT,
        _E.EXECUTION_AUTHORIZED,
        _E.EXECUTION_CONFIRMED,
        _E.DECISION_EXPIRED,
        _E.DECISION_CANCELLED,
        _E.AUTHORITY_ESCALATED,
        _E.AUTHORITY_REQUIRED,
        _E.DELEGATION_GRANTED,
        _E.KEY_REGISTERED,
        _E.KEY_REVOKED,
    }
)
"""Event types that change what may execute: honoured only when attested by an owner."""

RESTRICTION_CLEARED = "restriction_cleared"


def is_authority(event_type: str, payload: Mapping[str, Any]) -> bool:
    """True for an event a reader may act on only when its owner tier signed it.

    Besides ``AUTHORITY``, an ``anomaly.detected`` that clears restriction mode lifts a
    block, so it is authority too (one that enters restriction only ever denies more)."""
    if event_type == _E.ANOMALY_DETECTED.value:
        return payload.get("kind") == RESTRICTION_CLEARED
    try:
        return EventType(event_type) in AUTHORITY
    except ValueError:
        return True  # an unknown type is never honoured unsigned


def content_digest(
    event_type: str,
    actor: str,
    policy_version: str,
    payload: Mapping[str, Any],
    unique_key: str | None,
) -> str:
    """sha256 hex of the JCS of exactly what the writing tier chose for one event."""
    return hashlib.sha256(
        canonical_json(
            {
                "event_type": event_type,
                "actor": actor,
                "policy_version": policy_version,
                "payload": payload,
                "unique_key": unique_key,
            }
        )
    ).hexdigest()


def new_event_digest(e: NewEvent) -> str:
    """``content_digest`` of an event as a tier proposes it (what its attestation signs)."""
    return content_digest(
        EventType(e.event_type).value, e.actor, e.policy_version, e.payload, e.unique_key
    )


def _stored_digest(e: StoredEvent) -> str:
    return content_digest(e.event_type, e.actor, e.policy_version, e.payload, e.unique_key)


@dataclass(frozen=True)
class Statement:
    """What a tier signs for one stream's part of one batch (module docstring)."""

    decision_id: str
    tier: Tier
    key_id: str
    prev_sequence: int
    prev_hash: str
    events: tuple[str, ...]

    def signed_bytes(self) -> bytes:
        return canonical_json(self._fields())

    def _fields(self) -> dict[str, Any]:
        return {
            "type": ATTESTATION_TYPE,
            "version": ATTESTATION_VERSION,
            "decision_id": self.decision_id,
            "tier": self.tier.value,
            "key_id": self.key_id,
            "prev_sequence": self.prev_sequence,
            "prev_hash": self.prev_hash,
            "events": list(self.events),
        }

    @property
    def first_sequence(self) -> int:
        return self.prev_sequence + 1

    @property
    def last_sequence(self) -> int:
        return self.prev_sequence + len(self.events)

    def to_payload(self, signature: str) -> dict[str, Any]:
        return {"statement": self._fields(), "signature": signature}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> tuple[Statement, str]:
        """Parse strictly (exact fields, one spelling); ValueError naming what is wrong."""
        if set(payload) != {"statement", "signature"}:
            raise ValueError(f"payload fields {sorted(payload)}, expected statement, signature")
        st, sig = payload["statement"], payload["signature"]
        if not isinstance(st, Mapping) or set(st) != _FIELDS:
            raise ValueError(f"statement fields must be exactly {sorted(_FIELDS)}")
        if st["type"] != ATTESTATION_TYPE or st["version"] != ATTESTATION_VERSION:
            raise ValueError(f"statement type/version {st['type']!r}/{st['version']!r}")
        prev_seq, prev_hash, events = st["prev_sequence"], st["prev_hash"], st["events"]
        if not isinstance(prev_seq, int) or isinstance(prev_seq, bool) or prev_seq < 0:
            raise ValueError(f"prev_sequence must be an integer >= 0, got {prev_seq!r}")
        if not isinstance(prev_hash, str) or not _HEX64.fullmatch(prev_hash):
            raise ValueError("prev_hash must be 64 lower-case hex digits")
        if (prev_seq == 0) != (prev_hash == GENESIS_HASH):
            raise ValueError("prev_hash is the genesis hash exactly when prev_sequence is 0")
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH_EVENTS:
            raise ValueError(f"events must list 1..{MAX_BATCH_EVENTS} digests")
        if not all(isinstance(d, str) and _HEX64.fullmatch(d) for d in events):
            raise ValueError("events must be 64-hex-digit sha256 digests")
        key_id, decision_id = st["key_id"], st["decision_id"]
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise ValueError("key_id must be 1-128 characters of [A-Za-z0-9._:@/+=-]")
        if not isinstance(decision_id, str) or not decision_id:
            raise ValueError("decision_id must be a non-empty string")
        if not isinstance(sig, str) or len(sig) > 256:
            raise ValueError("signature must be a string of at most 256 characters")
        return (
            cls(decision_id, Tier(st["tier"]), key_id, prev_seq, prev_hash, tuple(events)),
            sig,
        )


def attestation_event(statement: Statement, signature: str) -> NewEvent:
    """The ``batch.attested`` event that carries a signed statement into the batch."""
    return NewEvent(
        statement.decision_id,
        _A,
        f"tier:{statement.tier.value}",
        "",
        statement.to_payload(signature),
    )


def _signature_bytes(signature: str) -> bytes:
    """The 64 raw bytes of ``ed25519:<b64url>`` or ``vault:vN:<b64>`` (one spelling each)."""
    m = _B64URL_SIG.fullmatch(signature)
    try:
        if m is not None:
            raw = base64.urlsafe_b64decode(m.group(1) + "==")
            ok = base64.urlsafe_b64encode(raw).decode().rstrip("=") == m.group(1)
        else:
            t = _TRANSIT_SIG.fullmatch(signature)
            if t is None:
                raise ValueError("a signature is 'ed25519:<base64url>' or 'vault:v<N>:<base64>'")
            raw = base64.b64decode(t.group(2), validate=True)
            ok = base64.b64encode(raw).decode() == t.group(2)
    except binascii.Error as e:
        raise ValueError(f"signature is not valid base64 ({e})") from e
    if not ok or len(raw) != 64:
        raise ValueError("signature is not canonically encoded")
    return raw


class TierKeys:
    """The pinned public keys: key id -> (tier, raw Ed25519 public key)."""

    def __init__(self, keys: Mapping[str, tuple[Tier, bytes]]) -> None:
        self._keys: dict[str, tuple[Tier, Ed25519PublicKey]] = {}
        for kid, (tier, raw) in keys.items():
            if not _KEY_ID.fullmatch(kid):
                raise ValueError(f"tier key id {kid!r} is not 1-128 of [A-Za-z0-9._:@/+=-]")
            self._keys[kid] = (Tier(tier), Ed25519PublicKey.from_public_bytes(raw))

    def __len__(self) -> int:
        return len(self._keys)

    def tiers(self) -> frozenset[Tier]:
        return frozenset(t for t, _ in self._keys.values())

    def key_ids(self, tier: Tier) -> list[str]:
        return sorted(k for k, (t, _) in self._keys.items() if t is tier)

    def verify(self, statement: Statement, signature: str) -> Tier:
        """The statement's tier if its key is pinned for that tier and the signature
        verifies; ValueError saying which of the two failed."""
        # 1. the key id is pinned, and pinned for the tier the statement claims
        found = self._keys.get(statement.key_id)
        if found is None:
            raise ValueError(f"key {statement.key_id!r} is not pinned in the trust file")
        tier, pub = found
        if tier is not statement.tier:
            raise ValueError(
                f"key {statement.key_id!r} is pinned for tier {tier.value}, "
                f"the statement claims {statement.tier.value}"
            )
        # 2. the signature verifies over the canonical statement bytes
        try:
            pub.verify(_signature_bytes(signature), statement.signed_bytes())
        except InvalidSignature as e:
            raise ValueError(f"the signature does not verify with key {statement.key_id}") from e
        return tier


def _violation(what: str, e: StoredEvent, expected: str, actual: str) -> IntegrityViolation:
    return IntegrityViolation(
        what,
        decision_id=e.decision_id,
        sequence=e.sequence,
        global_seq=e.global_seq,
        expected=expected,
        actual=actual,
    )


def require_authority(events: Sequence[StoredEvent], keys: TierKeys) -> AttestationChecker:
    """One whole stream (sequence order, from 1): every attestation in it verifies and every
    authority event is covered by a tier that owns it. IntegrityViolation naming the first
    event at fault: ``attestation_malformed``, ``attestation_signature`` (key not pinned
    for the tier it claims, or a bad signature), ``attestation_mismatch`` (covered events
    differ from what was signed), ``attestation_overlap``, ``authority_unsigned``."""
    checker = AttestationChecker(keys)
    for e in events:
        checker.feed(e)
    checker.finish()
    return checker


def check_placement(
    batch: Iterable[tuple[str, str, Mapping[str, Any]]],
    heads: Mapping[str, tuple[int, str]],
) -> None:
    """Ledger side: an attestation names its stream's head before the batch and covers
    every event of that stream in the batch (one attestation per stream per batch, after
    them). ``batch`` yields (decision_id, event_type, payload) in order; ``heads`` is each
    stream's head before the batch. StaleHead when the stream moved (the tier reads the
    head and signs again); InvalidEvent for an attestation that cannot be parsed or does
    not cover exactly its stream's events."""
    count: dict[str, int] = {}
    attested: dict[str, int] = {}
    for decision_id, event_type, payload in batch:
        if event_type != _A.value:
            if decision_id in attested:
                raise InvalidEvent(f"an event of {decision_id} follows its batch.attested")
            count[decision_id] = count.get(decision_id, 0) + 1
            continue
        try:
            st, _ = Statement.from_payload(payload)
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidEvent(f"batch.attested: {e}") from e
        if st.decision_id != decision_id or decision_id in attested:
            raise InvalidEvent(
                f"batch.attested for {st.decision_id!r} in stream {decision_id!r}: one per "
                "stream per batch, in its own stream"
            )
        head = heads.get(decision_id, (0, GENESIS_HASH))
        if (st.prev_sequence, st.prev_hash) != head:
            raise StaleHead(
                f"stream {decision_id} is at sequence {head[0]} ({head[1][:12]}...), the "
                f"attestation was signed for sequence {st.prev_sequence}; read the head and "
                "sign again"
            )
        if len(st.events) != count.get(decision_id, 0):
            raise InvalidEvent(
                f"batch.attested for {decision_id} covers {len(st.events)} events, the batch "
                f"has {count.get(decision_id, 0)} of that stream before it"
            )
        attested[decision_id] = len(st.events)


def authorize_batch(events: Sequence[NewEvent], tier: Tier, keys: TierKeys) -> None:
    """Ledger service side: may the writer ``tier`` append this batch? Every event is of
    a type ``tier`` owns, and every stream in it carries one attestation of ``tier``,
    signed by a key pinned for ``tier``, covering exactly that stream's events in the
    batch. PermissionError naming the first event or stream at fault."""
    streams: dict[str, list[NewEvent]] = {}
    statements: dict[str, tuple[Statement, str]] = {}
    for i, e in enumerate(events):
        etype = EventType(e.event_type)
        if tier not in OWNERS.get(etype, frozenset()):
            raise PermissionError(
                f"events[{i}]: tier {tier.value} may not write {etype.value} (owners: "
                f"{', '.join(sorted(t.value for t in OWNERS.get(etype, frozenset())))})"
            )
        if etype is _A:
            try:
                statements[e.decision_id] = Statement.from_payload(e.payload)
            except (ValueError, KeyError, TypeError) as err:
                raise PermissionError(f"events[{i}]: batch.attested is malformed: {err}") from err
        else:
            streams.setdefault(e.decision_id, []).append(e)
    for decision_id, mine in streams.items():
        found = statements.get(decision_id)
        if found is None:
            raise PermissionError(
                f"stream {decision_id}: the batch carries no attestation by {tier.value}; "
                "a writer appends only what it signs"
            )
        st, sig = found
        if st.tier is not tier:
            raise PermissionError(
                f"stream {decision_id}: attested as {st.tier.value}, the writer is {tier.value}"
            )
        try:
            keys.verify(st, sig)
        except ValueError as err:
            raise PermissionError(f"stream {decision_id}: {err}") from err
        if tuple(new_event_digest(e) for e in mine) != st.events:
            raise PermissionError(
                f"stream {decision_id}: the attestation does not match the batch's events"
            )


class AttestationChecker:
    """``require_authority`` over a whole ledger read once in global order, incrementally
    (``l7 ledger verify`` and the integrity monitor): ``feed`` each event, ``finish``
    after the last one read. Keeps, per stream, only what no attestation covers yet.

    A batch is atomic and its attestations come last in it, so once every committed event
    has been fed, an authority event still uncovered is unsigned: ``finish`` raises for
    the first one (by global_seq), IntegrityViolation ``authority_unsigned``."""

    def __init__(self, keys: TierKeys) -> None:
        self.keys = keys
        self._heads: dict[str, tuple[int, str]] = {}
        self._open: dict[str, dict[int, StoredEvent]] = {}
        self.attestations = 0
        self.covered = 0

    def feed(self, e: StoredEvent) -> None:
        last = self._heads.get(e.decision_id, (0, GENESIS_HASH))
        if e.sequence != last[0] + 1 or e.prev_hash != last[1]:
            raise _violation(
                "chain_break", e, f"sequence {last[0] + 1} after {last[1]}", f"{e.sequence}"
            )
        self._heads[e.decision_id] = (e.sequence, e.hash)
        if e.event_type != _A.value:
            self._open.setdefault(e.decision_id, {})[e.sequence] = e
            return
        self.attestations += 1
        self._cover(e)

    def _cover(self, a: StoredEvent) -> None:
        # 1. well-formed, for this stream, written under the tier's own name
        try:
            st, sig = Statement.from_payload(a.payload)
        except (ValueError, KeyError, TypeError) as err:
            raise _violation(
                "attestation_malformed", a, "a well-formed statement", str(err)
            ) from err
        if st.decision_id != a.decision_id or a.actor != f"tier:{st.tier.value}":
            raise _violation(
                "attestation_malformed", a, f"tier:{st.tier.value} on {st.decision_id}", a.actor
            )
        # 2. signed by a key pinned for that tier
        try:
            tier = self.keys.verify(st, sig)
        except ValueError as err:
            raise _violation(
                "attestation_signature", a, f"a {st.tier.value} signature", str(err)
            ) from err
        # 3. each covered event is in the stream before it, uncovered so far, exactly what
        #    the tier wrote, and (for authority) of a type that tier owns
        pending = self._open.get(a.decision_id, {})
        for offset, digest in enumerate(st.events):
            e = pending.pop(st.first_sequence + offset, None)
            if e is None:
                raise _violation(
                    "attestation_overlap",
                    a,
                    f"sequence {st.first_sequence + offset} not yet covered",
                    "covered before, or not in the stream",
                )
            if offset == 0 and e.prev_hash != st.prev_hash:
                raise _violation(
                    "attestation_mismatch", e, f"prev_hash {st.prev_hash}", e.prev_hash
                )
            if _stored_digest(e) != digest:
                raise _violation(
                    "attestation_mismatch", e, f"content digest {digest}", "other content"
                )
            owners = OWNERS.get(EventType(e.event_type), frozenset())
            if is_authority(e.event_type, e.payload) and tier not in owners:
                raise _violation(
                    "authority_unsigned",
                    e,
                    f"{e.event_type} signed by {'/'.join(sorted(t.value for t in owners))}",
                    f"signed by {tier.value}",
                )
            self.covered += 1
        # what is left before the covered range and not authority will never be covered
        for seq in [s for s, e in pending.items() if s < st.first_sequence]:
            if not is_authority(pending[seq].event_type, pending[seq].payload):
                del pending[seq]

    def finish(self) -> None:
        """Raise for the first authority event (in global order) no attestation covers."""
        unsigned = [
            e
            for pending in self._open.values()
            for e in pending.values()
            if is_authority(e.event_type, e.payload)
        ]
        if unsigned:
            e = min(unsigned, key=lambda x: x.global_seq)
            owners = (
                OWNERS.get(EventType(e.event_type), frozenset())
                if e.event_type in {t.value for t in EventType}
                else frozenset()
            )
            raise _violation(
                "authority_unsigned",
                e,
                f"{e.event_type} signed by {'/'.join(sorted(t.value for t in owners)) or '-'}",
                "no attestation",
            )
        for decision_id in [d for d, p in self._open.items() if not p]:
            del self._open[decision_id]
