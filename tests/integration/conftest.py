"""Fixtures that start the real parts on loopback: OPA (from .tools/opa) and the full stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from l7.client import GovernanceClient
from l7.stack import Stack, StackConfig
from tests.integration.openbao import openbao, openbao_private  # noqa: F401 (fixtures)
from tests.ledger.postgres import pg_cluster, pg_url  # noqa: F401 (fixtures)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A full stack: locked local bundle in a real OPA child, SQLite ledger file, gRPC."""
    cfg = StackConfig(
        env="local", ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}", work_dir=tmp_path
    )
    with Stack(cfg) as s:
        yield s


@pytest.fixture
def client(stack: Stack) -> Iterator[GovernanceClient]:
    with GovernanceClient(stack.target) as c:
        yield c
