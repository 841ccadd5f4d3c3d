"""The one screening step at the gRPC edge: every string a request carries is scanned
before any handler, policy, ledger write or log line sees it (issue #13, decision 0011).

``screen_request(msg)`` turns a decoded request message into plain values by proto field
name (strings, bytes, nested messages, repeated fields, ``Struct`` as JSON values), applies
the schema of ``l7.secrets.fields`` (exempt ids and digests, JSON members, the payload the
engine screens under policy, results redacted rather than refused), and runs the scanner
(``l7.secrets.scanner``: shapes, encodings, long random tokens, secret-named fields) over
the rest. The first finding outside a redacted field raises ``SecretInPayload`` naming the
field path and the kind, never the value; findings inside one are replaced in ``msg`` by
``[redacted:<kind>]``. Message types without rules are screened whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from l7.secrets.fields import RULES, Exempt, Json, Mode, Rule
from l7.secrets.interface import Finding, SecretInPayload
from l7.secrets.scanner import redact, scan

__all__ = ["screen_request", "to_plain"]

_MAX_JSON_CHARS = 256 * 1024


def _value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "struct_value":
        return _struct(v.struct_value)
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        return v.number_value
    if kind == "bool_value":
        return v.bool_value
    return None


def _struct(s: struct_pb2.Struct) -> dict[str, Any]:
    return {k: _value(x) for k, x in s.fields.items()}


def _is_repeated(f: FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def to_plain(msg: Message) -> dict[str, Any]:
    """The set fields of ``msg`` by proto field name, as plain Python values."""
    out: dict[str, Any] = {}
    for f, v in msg.ListFields():
        if f.message_type is not None and f.message_type.full_name == "google.protobuf.Struct":
            out[f.name] = [_struct(x) for x in v] if _is_repeated(f) else _struct(v)
        elif f.message_type is not None and f.message_type.GetOptions().map_entry:
            out[f.name] = {str(k): _plain_item(x) for k, x in v.items()}
        elif f.message_type is not None:
            out[f.name] = [to_plain(x) for x in v] if _is_repeated(f) else to_plain(v)
        else:
            out[f.name] = list(v) if _is_repeated(f) else v
    return out


def _plain_item(x: Any) -> Any:
    return to_plain(x) if isinstance(x, Message) else x


def _pop(tree: dict[str, Any], path: str) -> tuple[dict[str, Any], str] | None:
    """The dict holding the last segment of dotted ``path`` in ``tree``, and that key."""
    *parents, leaf = path.split(".")
    node: Any = tree
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return None
    return node, leaf


def _apply_json(rule: Json, text: object) -> Any:
    if not isinstance(text, str) or len(text) > _MAX_JSON_CHARS:
        return text
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return text  # not JSON: screened as the text it is
    if isinstance(doc, dict):
        for member, exempt in rule.members.items():
            spot = _pop(doc, member)
            if spot is not None and exempt.matches(spot[0][spot[1]]):
                del spot[0][spot[1]]
    return doc


def _apply(tree: dict[str, Any], rules: Mapping[str, Rule]) -> list[str]:
    """Remove exempt and engine-screened fields from ``tree`` and parse JSON fields;
    returns the paths whose findings are redacted instead of refused."""
    redacted: list[str] = []
    for path, rule in rules.items():
        spot = _pop(tree, path)
        if spot is None:
            continue
        node, leaf = spot
        if rule is Mode.ENGINE or (isinstance(rule, Exempt) and rule.matches(node[leaf])):
            del node[leaf]
        elif isinstance(rule, Json):
            node[leaf] = _apply_json(rule, node[leaf])
        elif rule is Mode.REDACT:
            redacted.append(path)
    return redacted


def _under(path: str, prefixes: list[str]) -> str | None:
    return next((p for p in prefixes if path == p or path.startswith((p + ".", p + "["))), None)


def _redact_into(msg: Message, path: str) -> None:
    """Replace the field at dotted ``path`` of ``msg`` by its redacted copy."""
    *parents, leaf = path.split(".")
    node = msg
    for p in parents:
        node = getattr(node, p)
    value = getattr(node, leaf)
    if isinstance(value, struct_pb2.Struct):
        clean, _ = redact(_struct(value), path)
        value.Clear()
        value.update(clean)
    elif isinstance(value, str):
        clean_text, _ = redact(value, path, leaf)
        setattr(node, leaf, clean_text)


def screen_request(msg: Message) -> list[Finding]:
    """Screen ``msg`` in place (see module doc); returns the findings that were redacted.
    Raises ``SecretInPayload`` for the first finding anywhere else."""
    rules = RULES.get(msg.DESCRIPTOR.full_name, {})
    tree = to_plain(msg)
    redact_paths = _apply(tree, rules)
    findings: list[Finding] = []
    for name, value in tree.items():
        findings.extend(scan(value, name, name))
    refused = [f for f in findings if _under(f.path, redact_paths) is None]
    if refused:
        raise SecretInPayload(refused[0].path, refused[0].kind)
    for path in dict.fromkeys(p for f in findings if (p := _under(f.path, redact_paths))):
        _redact_into(msg, path)
    return findings
