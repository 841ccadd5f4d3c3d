"""pytest fixtures for a real OpenBao dev server (see l7.devstack.openbao)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from l7.devstack.openbao import AUDIENCE, CLAIMS_TEMPLATE, OpenBaoDev, find_bao

__all__ = ["AUDIENCE", "CLAIMS_TEMPLATE", "OpenBaoDev", "find_bao", "openbao", "openbao_private"]


@pytest.fixture(scope="module")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDev]:
    """A shared, configured OpenBao for a test module. Do not stop or seal it."""
    bao = OpenBaoDev(work_dir=tmp_path_factory.mktemp("openbao"))
    try:
        yield bao.start()
    finally:
        bao.stop()


@pytest.fixture
def openbao_private(tmp_path: Path) -> Iterator[OpenBaoDev]:
    """A configured OpenBao of one's own, for tests that stop, seal or rotate it."""
    bao = OpenBaoDev(work_dir=tmp_path)
    try:
        yield bao.start()
    finally:
        bao.stop()
