"""``l7 decision replay ID``: re-judge a recorded decision with the exact revision that judged it.

Every decision names the bundle revision it was judged by, and its ``decision.evaluated``
event records the digest of the exact OPA input (plus the secret-reference metadata the
engine added beside the request; see ``l7.engine.events``). Replay:

1. reads the decision's events from the ledger and rebuilds the input from
   ``decision.created.request`` + ``policy_input.extra``; the rebuilt input must hash to
   the recorded digest, or replay says it cannot reproduce it (never a guess). Sealed
   envelope fields stay sealed: policy judged their ciphertext, which is what the
   ledger holds, and nothing is decrypted here;
2. finds the bundle of that revision: the ``policy.activated`` event that activated it
   names its digest in the bundle store (``<work-dir>/bundles/<digest>.tar.gz``); the
   store is scanned by ``.manifest`` revision when the ledger has no such record;
3. checks the bundle's digest and signature (a trusted key, the environment's scope) and
   starts a throwaway OPA on 127.0.0.1 with it;
4. evaluates and compares outcome, gates, risk, authority, lifecycle and enforcement mode.

Exit codes: 0 identical, 1 different (a field-by-field diff is printed), 2 the replay
is not possible (no such decision, input not reproducible, bundle unavailable or not
trusted), naming the flag or file at fault.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l7.crypto import canonical, sha256_hex
from l7.domain import Judgement
from l7.engine.events import apply_enforcement, clauses_json
from l7.engine.state import fold_decision
from l7.errors import BundleError, ConfigError, L7Error, LedgerDegraded, PolicyStoreDegraded
from l7.policy.bundle import (
    DEFAULT_SIGNING_KEY,
    BuiltBundle,
    committed_signers,
    open_stored_bundle,
    read_activations,
    stored_revisions,
)
from l7.policy.evaluator import OpaEvaluator
from l7.policy.opa_process import OpaProcess, find_opa
from l7.policy.signing import Signer, load_public_key, signer_of
from ledger import EventType, LedgerClient, LedgerError, StoredEvent

__all__ = [
    "ReplayInput",
    "ReplayUnavailable",
    "add_replay_command",
    "cmd_decision_replay",
    "compare",
    "judgement_view",
    "recover_input",
]

_SEALED_PREFIX = "vault:v"


class ReplayUnavailable(L7Error):
    """The decision cannot be replayed (its input or its bundle is not available)."""

    reason = "replay_unavailable"


@dataclass(frozen=True)
class ReplayInput:
    """What a decision was judged with, recovered from its ledger events."""

    decision_id: str
    revision: str
    policy_input: Mapping[str, Any]
    recorded: Judgement
    sealed_fields: tuple[str, ...] = ()
    """Payload fields that entered policy and the ledger as envelope ciphertext."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def recover_input(events: Sequence[StoredEvent]) -> ReplayInput:
    """The exact OPA input and revision of the decision's last policy evaluation."""
    if not events:
        raise ReplayUnavailable("no such decision in the ledger (check --ledger)")
    decision_id = events[0].decision_id
    try:
        d = fold_decision(events)
    except L7Error as e:
        raise ReplayUnavailable(f"decision {decision_id} cannot be rebuilt: {e}") from e
    evaluated = [e for e in events if e.event_type == EventType.DECISION_EVALUATED.value]
    if not evaluated or d.judgement is None:
        raise ReplayUnavailable(
            f"decision {decision_id} was never judged by policy (reason {d.reason_code!r}): "
            "there is nothing to replay"
        )
    last = evaluated[-1]
    record = last.payload.get("policy_input")
    if not isinstance(record, Mapping) or not isinstance(record.get("sha256"), str):
        raise ReplayUnavailable(
            f"decision {decision_id}: the evaluation under revision {last.policy_version[:12]} "
            "did not record its policy input (an older engine, or a re-evaluation); "
            "it cannot be reproduced exactly"
        )
    extra = record.get("extra") or {}
    request = events[0].payload.get("request")
    if not isinstance(request, Mapping) or not isinstance(extra, Mapping):
        raise ReplayUnavailable(f"decision {decision_id}: decision.created holds no request")
    action = request.get("action")
    payload = action.get("payload") if isinstance(action, Mapping) else None
    payload = payload if isinstance(payload, Mapping) else {}
    sealed = tuple(
        sorted(k for k, v in payload.items() if isinstance(v, str) and v.startswith(_SEALED_PREFIX))
    )
    policy_input = {**request, **extra}
    if sha256_hex(canonical(policy_input)) != record["sha256"]:
        why = (
            f"; it holds sealed envelope fields {list(sealed)} that replay does not open"
            if sealed
            else "; fields may have been dropped by the ledger field allowlist"
        )
        raise ReplayUnavailable(
            f"decision {decision_id}: the input rebuilt from the ledger does not match the "
            f"recorded digest {record['sha256'][:12]}{why}; refusing to guess it"
        )
    return ReplayInput(decision_id, last.policy_version, policy_input, d.judgement, sealed)


# -- finding and trusting the bundle ------------------------------------------------------


@dataclass(frozen=True)
class _Located:
    env: str
    path: Path
    signer_kid: str | None
    source: str


def _activation_events(
    ledger: LedgerClient, envs: Iterable[str], revision: str
) -> list[dict[str, Any]]:
    """``policy.activated`` payloads for ``revision``: first the ``policy/<env>`` streams of
    the environments we know of, then (with progress) the whole ledger."""
    found: list[dict[str, Any]] = []
    for env in sorted(set(envs)):
        for e in ledger.get_stream(f"policy/{env}"):
            if e.payload.get("revision") == revision:
                found.append(dict(e.payload))
    if found:
        return found
    total = ledger.count()
    _say(f"searching {total:,} ledger events for the activation of {revision[:12]}...")
    for i, e in enumerate(ledger.iter_events(), 1):
        if i % 50_000 == 0:
            _say(f"  {i:,}/{total:,} events searched")
        if e.event_type == EventType.POLICY_ACTIVATED.value and e.payload.get("revision") == (
            revision
        ):
            found.append(dict(e.payload))
    return found


def _known_envs(work_dir: Path, repo_root: Path) -> set[str]:
    envs = {p.stem for p in (work_dir / "activations").glob("*.json")}
    envs |= {p.parent.name for p in (repo_root / "bundles").glob("*/deployment.json")}
    return envs


def locate_bundle(
    ledger: LedgerClient, revision: str, *, work_dir: Path, repo_root: Path, env: str | None
) -> _Located:
    store = work_dir / "bundles"
    envs = {env} if env else _known_envs(work_dir, repo_root)
    for rec in _activation_events(ledger, envs, revision):
        digest = rec.get("digest")
        rec_env = rec.get("env")
        if isinstance(digest, str) and digest and isinstance(rec_env, str):
            path = store / f"{digest}.tar.gz"
            if path.is_file():
                kid = rec.get("signer_kid")
                return _Located(rec_env, path, kid if isinstance(kid, str) else None, "ledger")
            _say(f"policy.activated names {path}, which is not in the store (--work-dir)")
    for e in sorted(envs):
        try:
            history = read_activations(e, work_dir)
        except BundleError:
            continue
        for a in history:
            if a.revision == revision and a.digest and (store / f"{a.digest}.tar.gz").is_file():
                return _Located(e, store / f"{a.digest}.tar.gz", a.signer_kid, "activations")
    _say(f"scanning the bundle store {store} for revision {revision[:12]}...")
    paths = stored_revisions(store).get(revision, [])
    if paths and env:
        return _Located(env, paths[0], None, "store")
    if paths:
        raise ReplayUnavailable(
            f"{paths[0]} holds revision {revision[:12]} but no activation names its "
            "environment; pass --env"
        )
    raise ReplayUnavailable(
        f"the bundle for revision {revision} is not in the store {store} "
        "(pass --work-dir of the engine that judged it, or rebuild that revision with "
        "'l7 bundle build' from its git commit)"
    )


def _trusted(a: argparse.Namespace, env: str, work_dir: Path, repo_root: Path) -> list[Signer]:
    out: list[Signer] = []
    for f in a.trust_key or ():
        p = Path(f)
        try:
            pem = p.read_bytes()
        except OSError as e:
            raise ConfigError(f"--trust-key {p}: cannot read it: {e}") from e
        out.append(signer_of(load_public_key(pem, where=f"--trust-key {p}")))
    try:
        signers = committed_signers(env, repo_root)
    except BundleError:  # no trust file for env: only --trust-key keys
        return out
    out.extend(signers.pinned)
    own = work_dir / f"{DEFAULT_SIGNING_KEY}.pub"
    if signers.own_key and not signers.pinned and own.is_file():
        # only where the env trusts a deployment's own key (local, dev), as the engine did
        out.append(signer_of(load_public_key(own.read_bytes(), where=str(own))))
    return out


# -- evaluation and comparison ------------------------------------------------------------


def judgement_view(j: Judgement) -> dict[str, Any]:
    """The fields replay compares, as JSON."""
    e = apply_enforcement(j)
    return {
        "outcome": j.outcome.value,
        "effective_outcome": e.outcome.value,
        "enforcement_mode": j.enforcement_mode,
        "environment": j.environment,
        "gates": [
            {"id": g.id, "result": "pass" if g.passed else "fail", "reason": g.reason}
            for g in j.gates
        ],
        "risk.score": j.risk.score,
        "risk.band": j.risk.band.value,
        "risk.reasons": list(j.risk.reasons),
        "authority.required_levels": list(j.authority.required_levels),
        "authority.min_signatures": j.authority.min_signatures,
        "authority.cosign": list(j.authority.cosign),
        "authority.clauses": clauses_json(j.authority.clauses),
        "lifecycle": {
            "approval_window_s": j.lifecycle.approval_window_s,
            "ttl_s": j.lifecycle.ttl_s,
            "rationale_required": j.lifecycle.rationale_required,
        },
        "reasons": list(j.reasons),
    }


def compare(recorded: Judgement, replayed: Judgement) -> list[tuple[str, Any, Any]]:
    """(field, recorded, replayed) for every compared field that differs."""
    a, b = judgement_view(recorded), judgement_view(replayed)
    return [(k, a[k], b[k]) for k in a if a[k] != b[k]]


def evaluate_with(
    bundle: BuiltBundle, policy_input: Mapping[str, Any], *, opa_bin: Path
) -> Judgement:
    """Judge ``policy_input`` with ``bundle`` in a throwaway OPA on 127.0.0.1."""
    with OpaProcess(bundle.path, opa_bin=opa_bin, signer=bundle.signer, scope=bundle.scope) as opa:
        evaluator = OpaEvaluator(opa.url, expected_revision=bundle.revision, timeout_s=10.0)
        try:
            return evaluator.evaluate(policy_input)
        finally:
            evaluator.close()


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
    return text if len(text) <= 200 else text[:197] + "..."


def _open_ledger(url: str) -> LedgerClient:
    from l7.stack import connect_ledger
    from ledger import open_ledger

    if url.startswith("grpc://"):
        return connect_ledger(url, token=os.environ.get("L7_LEDGER_TOKEN"))
    return open_ledger(url, create=False)


def _bundle_for(
    a: argparse.Namespace, ledger: LedgerClient, revision: str, work_dir: Path, repo_root: Path
) -> BuiltBundle:
    loc = locate_bundle(ledger, revision, work_dir=work_dir, repo_root=repo_root, env=a.env)
    trusted = _trusted(a, loc.env, work_dir, repo_root)
    bundle = open_stored_bundle(loc.path, env=loc.env, revision=revision, trusted=trusted)
    if loc.signer_kid and bundle.signer is not None and bundle.signer.kid != loc.signer_kid:
        raise ReplayUnavailable(
            f"{loc.path} is signed by {bundle.signer.kid}, but the activation of revision "
            f"{revision[:12]} names signer {loc.signer_kid}"
        )
    _say(
        f"bundle {loc.path.name[:12]} (env {loc.env}, found via {loc.source}) verified: "
        f"revision {revision[:12]}, signed by {bundle.signer.kid if bundle.signer else '?'}"
    )
    return bundle


def replay(a: argparse.Namespace, ledger: LedgerClient) -> int:
    work_dir, repo_root = Path(a.work_dir), Path(a.repo_root)
    if not work_dir.is_dir():
        raise ReplayUnavailable(f"--work-dir {work_dir} is not a directory")
    _say(f"reading decision {a.decision_id} from {a.ledger}...")
    rin = recover_input(ledger.get_stream(a.decision_id))
    revision = a.against_revision or rin.revision
    note = f" (what-if: recorded under {rin.revision[:12]})" if a.against_revision else ""
    _say(f"decision judged by revision {rin.revision[:12]}; replaying with {revision[:12]}{note}")
    if rin.sealed_fields:
        _say(
            f"sealed envelope fields {list(rin.sealed_fields)} are replayed as the ciphertext "
            "policy judged; they are not decrypted"
        )
    bundle = _bundle_for(a, ledger, revision, work_dir, repo_root)
    opa_bin = find_opa(a.opa_bin)
    _say("starting a throwaway OPA on 127.0.0.1 and evaluating...")
    replayed = evaluate_with(bundle, rin.policy_input, opa_bin=opa_bin)
    diffs = compare(rin.recorded, replayed)
    if a.json:
        print(
            json.dumps(
                {
                    "decision_id": rin.decision_id,
                    "recorded_revision": rin.revision,
                    "replayed_revision": replayed.policy_version,
                    "identical": not diffs,
                    "recorded": judgement_view(rin.recorded),
                    "replayed": judgement_view(replayed),
                    "differences": [
                        {"field": f, "recorded": x, "replayed": y} for f, x, y in diffs
                    ],
                },
                indent=2,
            )
        )
    else:
        view = judgement_view(replayed)
        print(f"decision   {rin.decision_id}")
        print(f"revision   recorded {rin.revision}  replayed {replayed.policy_version}")
        for k in ("outcome", "effective_outcome", "enforcement_mode", "risk.score", "risk.band"):
            print(f"{k:<18} {view[k]}")
        failed = [g["id"] for g in view["gates"] if g["result"] != "pass"]
        print(f"{'gates':<18} {len(view['gates'])}, failed: {', '.join(failed) or 'none'}")
        clauses = ", ".join(
            f"{c['count']}x L{c['min_level']}+ ({c['id']})" for c in view["authority.clauses"]
        )
        print(
            f"{'authority':<18} {view['authority.min_signatures']} signature(s)"
            + (f": {clauses}" if clauses else "")
        )
        if diffs:
            print(f"DIFFERENT: {len(diffs)} field(s) differ")
            for f, x, y in diffs:
                print(f"  {f}\n    recorded: {_short(x)}\n    replayed: {_short(y)}")
        else:
            print(f"IDENTICAL: all {len(view)} compared fields match")
    return 1 if diffs else 0


def cmd_decision_replay(a: argparse.Namespace) -> int:
    try:
        ledger = _open_ledger(a.ledger)
    except (LedgerError, OSError) as e:
        _say(f"l7: --ledger {a.ledger}: cannot open the ledger: {e}")
        return 2
    try:
        return replay(a, ledger)
    except (ReplayUnavailable, BundleError, ConfigError, PolicyStoreDegraded) as e:
        _say(f"l7: cannot replay {a.decision_id}: {e}")
        return 2
    except (LedgerError, LedgerDegraded) as e:
        _say(f"l7: cannot replay {a.decision_id}: --ledger {a.ledger}: {e}")
        return 2
    finally:
        ledger.close()


def add_replay_command(dsub: Any, ledger_flag: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``l7 decision replay`` on the ``decision`` sub-parsers."""
    from l7.stack import REPO_ROOT

    rp: argparse.ArgumentParser = dsub.add_parser(
        "replay", help="re-judge a decision with the exact bundle revision that judged it"
    )
    rp.add_argument("decision_id")
    ledger_flag(rp)
    rp.add_argument(
        "--work-dir",
        default=str(REPO_ROOT / ".build"),
        help="the engine's work dir, holding the bundle store (bundles/<digest>.tar.gz)",
    )
    rp.add_argument(
        "--repo-root",
        default=str(REPO_ROOT),
        help="where bundles/<env>.trust.json pins the bundle signers",
    )
    rp.add_argument("--env", default=None, help="bundle environment, if no activation names it")
    rp.add_argument(
        "--trust-key",
        action="append",
        metavar="PEM",
        help="a trusted bundle-signing public key (repeatable); the trust file's pinned "
        "bundle signers are trusted too, and the work dir's own key where the environment "
        "pins none and allows local keys",
    )
    rp.add_argument(
        "--against-revision",
        metavar="REV",
        help="what-if: judge the recorded input with another stored revision instead",
    )
    rp.add_argument("--opa-bin", default=None, help="OPA binary (default: .tools/opa)")
    rp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    rp.set_defaults(fn=cmd_decision_replay)
