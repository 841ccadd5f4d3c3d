"""Fuzz the JSON files the CLI reads: the request of ``l7 decide FILE`` and the audit
pack of ``l7 ledger verify --export FILE``. Random bytes, invalid JSON, wrong types,
deep nesting, NaN/Infinity, oversized files.

Every run ends with a non-zero exit code and a single ``l7: ...`` line on stderr naming
the file, never a Python traceback. Most examples run ``l7.cli.main.main`` in-process
(fast); a few run the installed ``l7`` in a subprocess to see what a user sees.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from l7.cli.main import main
from tests.conftest import REPO, example
from tests.fuzz.support import NON_FINITE, fuzz, json_values, nest

DEAD_TARGET = "127.0.0.1:1"  # nothing listens: a request that parses fails UNAVAILABLE
EXAMPLES = ("deploy-prod.json", "funds-critical.json", "read-dev.json", "unknown-class.json")
LIMIT = 256 * 1024


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


@st.composite
def request_files(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            ["bytes", "text", "cut", "types", "deep", "deep_payload", "nan", "huge", "bom"]
        )
    )
    base = example(draw(st.sampled_from(EXAMPLES)))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "cut":
        raw = json.dumps(base).encode()
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "types":
        req = copy.deepcopy(base)
        section = draw(st.sampled_from(["action", "context"]))
        key = draw(st.sampled_from([*sorted(req[section]), "unknown"]))
        req[section][key] = draw(json_values(8))
        if draw(st.booleans()):
            req[draw(st.text(max_size=8))] = draw(json_values(4))
        return _dumps(req)
    if kind == "deep":
        n = draw(st.integers(30, 200_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * n + "1" + closer * draw(st.sampled_from([n, 0]))).encode()
    if kind == "deep_payload":
        req = copy.deepcopy(base)
        req["action"]["payload"] = {"deep": nest(draw(st.integers(17, 200)))}
        return _dumps(req)
    if kind == "nan":
        req = copy.deepcopy(base)
        req["action"]["payload"] = {"x": draw(NON_FINITE)}
        text = _dumps(req)
        return text.replace(b"Infinity", b"1e999") if draw(st.booleans()) else text
    if kind == "huge":
        req = copy.deepcopy(base)
        req["action"]["intent"] = "x" * draw(st.integers(LIMIT, LIMIT + 50_000))
        return _dumps(req)
    return b"\xef\xbb\xbf" + json.dumps(base).encode()  # a UTF-8 byte order mark


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_refusal(rc: int, out: str, err: str, path: Path) -> None:
    assert "Traceback" not in err and "Traceback" not in out, err
    assert rc != 0, (out, err)
    if err.strip():
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("l7: "), err
        assert str(path) in lines[0], err
    else:  # the file was a well-formed request: the dead server is what failed
        error = json.loads(out)["error"]
        assert error["code"] == "UNAVAILABLE", out


@fuzz()
@given(content=request_files())
def test_decide_file_fuzzed(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path_factory.mktemp("cli") / "request.json"
    path.write_bytes(content)
    rc, out, err = run_in_process(["decide", "--target", DEAD_TARGET, str(path)], capsys)
    assert_clean_refusal(rc, out, err, path)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"[" * 100_000, "payload_too_deep"),
        (_dumps({**example("read-dev.json"), "action": {"class": 5}}), "action"),
        (b'{"action": {"payload": {"x": NaN}}}', "number_not_finite"),
        (b'{"action": {"payload": {"x": 1e999}}}', "number_not_finite"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"a": "' + b"x" * (LIMIT + 1) + b'"}', "payload_too_large"),
    ],
)
def test_decide_file_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, says: str
) -> None:
    path = tmp_path / "request.json"
    path.write_bytes(content)
    rc, out, err = run_in_process(["decide", "--target", DEAD_TARGET, str(path)], capsys)
    assert_clean_refusal(rc, out, err, path)
    assert says in err


@pytest.fixture(scope="module")
def checkpoint_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-key") / "checkpoint.pub"
    pub = Ed25519PrivateKey.generate().public_key()
    path.write_bytes(
        pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


EXPORT: dict[str, Any] = {
    "format": "l7.ledger.export",
    "version": 1,
    "checkpoint": {
        "tree_size": 1,
        "root_hash": "00" * 32,
        "timestamp": "2026-11-26T00:00:00Z",
        "key_id": "k",
        "signature": "AA",
    },
    "events": [],
    "verification": {
        "result": "verified",
        "events": 0,
        "streams": 0,
        "tree_size": 1,
        "streams_from_genesis": [],
    },
}


@st.composite
def export_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "mutated", "mutated", "deep", "nan"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "deep":
        n = draw(st.integers(30, 100_000))
        return ("[" * n + "]" * n).encode()
    doc = copy.deepcopy(EXPORT)
    if kind == "nan":
        doc["checkpoint"]["tree_size"] = draw(NON_FINITE)
        return _dumps(doc)
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(["", "checkpoint", "verification"]))
        node = doc if not section else doc.get(section)
        if isinstance(node, dict) and node:  # an earlier step may have replaced it
            node[draw(st.sampled_from(sorted(node)))] = draw(json_values(6))
    return _dumps(doc)


@fuzz()
@given(content=export_files())
def test_ledger_verify_export_fuzzed(
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    checkpoint_key: Path,
    content: bytes,
) -> None:
    path = tmp_path_factory.mktemp("cli") / "pack.json"
    path.write_bytes(content)
    argv = ["ledger", "verify", "--export", str(path), "--checkpoint-key", str(checkpoint_key)]
    rc, out, err = run_in_process(argv, capsys)
    assert "Traceback" not in err + out, err
    assert rc != 0 and not out.startswith("OK"), (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], err


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 200_000,
        b'{"action": {"payload": {"x": NaN}}}',
        _dumps({**example("read-dev.json"), "context": "nobody"}),
        bytes(range(256)),
    ],
    ids=["deep", "nan", "wrong-type", "binary"],
)
def test_the_installed_cli_prints_no_traceback(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "request.json"
    path.write_bytes(content)
    r = subprocess.run(
        [sys.executable, "-m", "l7.cli.main", "decide", "--target", DEAD_TARGET, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("l7: ") and str(path) in lines[0], r.stderr
