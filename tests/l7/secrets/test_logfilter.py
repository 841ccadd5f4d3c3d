"""The redacting log filter: messages, args, tracebacks."""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Iterator

import pytest

from l7.secrets.logfilter import SecretRedactingFilter, install, uninstall
from tests.l7.secrets import fakes


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    logger = logging.getLogger("l7.test.secrets.logfilter")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)


def test_message_args_and_traceback_are_redacted(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = logged
    r = random.Random(5)
    token, key = fakes.jwt_token(r), fakes.aws_access_key(r)
    url = fakes.url_with_password(r)
    flt = install(logger)
    try:
        logger.info("calling with %s and %r", token, {"id": key})
        logger.warning(f"connecting to {url}")
        try:
            raise RuntimeError(f"refused: Authorization: Bearer {fakes.rand(r, 30)}")
        except RuntimeError:
            logger.exception("failed %d times", 3)
    finally:
        uninstall(flt, logger)
    text = out.getvalue()
    assert token not in text and key not in text and fakes.core(url) not in text
    assert "calling with [redacted:jwt] and {'id': '[redacted:aws_access_key]'}" in text
    assert "[redacted:connection_string]@" in text
    assert "failed 3 times" in text
    assert "RuntimeError: refused: Authorization: Bearer [redacted:bearer_token]" in text


def test_install_is_idempotent_and_uninstall_removes(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, _ = logged
    a = install(logger)
    b = install(logger)
    assert a is b
    assert sum(isinstance(f, SecretRedactingFilter) for f in logger.handlers[0].filters) == 1
    uninstall(a, logger)
    assert not any(isinstance(f, SecretRedactingFilter) for f in logger.handlers[0].filters)


def test_filter_runs_once_and_never_drops(logged: tuple[logging.Logger, io.StringIO]) -> None:
    flt = SecretRedactingFilter()
    key = fakes.stripe_key(random.Random(2))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", (key,), None)
    assert flt.filter(record) is True
    assert record.getMessage() == "key [redacted:stripe_key]"
    assert flt.filter(record) is True
    assert record.getMessage() == "key [redacted:stripe_key]"


def test_bad_format_args_do_not_break_logging() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("many",), None)
    assert SecretRedactingFilter().filter(record) is True
    assert "many" in record.getMessage()
