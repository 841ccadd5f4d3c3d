"""Fuzz suite plumbing: choose the seed once per session, show it in the header, and
name it beside every failing fuzz test."""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Generator
from typing import Any

import pytest

from tests.fuzz import support


def pytest_configure(config: pytest.Config) -> None:
    chosen: Any = None
    try:
        chosen = config.getoption("--hypothesis-seed")
    except ValueError:  # hypothesis' pytest plugin not loaded
        chosen = None
    if chosen is None:
        chosen = os.environ.get("L7_FUZZ_SEED")
    if chosen is None:
        support.SEED = random.SystemRandom().getrandbits(32)
    else:
        text = str(chosen).strip()
        support.SEED = int(text) if text.isdigit() else zlib.crc32(text.encode())


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"l7 fuzz: seed {support.SEED}, {support.EXAMPLES} examples per test "
        "(L7_FUZZ_SEED / L7_FUZZ_EXAMPLES)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(
            (
                "l7 fuzz seed",
                f"seed {support.SEED}: rerun with L7_FUZZ_SEED={support.SEED} "
                f"(or --hypothesis-seed={support.SEED}) .venv/bin/python -m pytest "
                f"{item.nodeid}",
            )
        )
