"""Keep detected secrets out of logs: a ``logging.Filter`` that redacts every record.

The filter formats the record's message (``msg % args``), runs it through
``l7.secrets.scanner.redact_text`` and stores the result as the message with no args; it
does the same to the formatted traceback and stack. Redaction is by shape (private keys,
JWTs, cloud keys, bearer tokens, passwords in URLs, high-entropy ``name=value`` pairs):
a secret that looks like nothing cannot be recognised, so never log values on purpose.

``install()`` attaches one filter to the root logger and to each of its handlers present
at that moment (a handler filter sees records propagated from every logger; a logger
filter only records created on that logger). Handlers added later need
``handler.addFilter(filter)`` themselves.
"""

from __future__ import annotations

import logging

from l7.secrets.scanner import redact_text

__all__ = ["SecretRedactingFilter", "install", "uninstall"]

_MARK = "_l7_secrets_redacted"


class SecretRedactingFilter(logging.Filter):
    """Redacts a record in place; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _MARK, False):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # args that do not fit the format
            message = f"{record.msg} {record.args}"
        record.msg = redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        setattr(record, _MARK, True)
        return True


def install(logger: logging.Logger | None = None) -> SecretRedactingFilter:
    """Attach a ``SecretRedactingFilter`` to ``logger`` (default: root) and its current
    handlers; idempotent (an installed filter is reused). Returns the filter."""
    target = logger or logging.getLogger()
    flt = next((f for f in target.filters if isinstance(f, SecretRedactingFilter)), None)
    if flt is None:
        flt = SecretRedactingFilter()
        target.addFilter(flt)
    for handler in target.handlers:
        if flt not in handler.filters:
            handler.addFilter(flt)
    return flt


def uninstall(flt: SecretRedactingFilter, logger: logging.Logger | None = None) -> None:
    """Remove ``flt`` from ``logger`` (default: root) and its handlers."""
    target = logger or logging.getLogger()
    target.removeFilter(flt)
    for handler in target.handlers:
        handler.removeFilter(flt)
