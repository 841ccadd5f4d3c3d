"""The one place where database exceptions become ledger errors.

SQLAlchemy (and through it sqlite3 and psycopg) and Alembic raise their own
exceptions; ``db_errors`` turns each into the ledger error tree
(``ledger.errors``) with ``raise ... from e``, so callers see DuplicateKey or a
LedgerUnavailable whose message says where, what and what to do. PostgreSQL
errors are classified by SQLSTATE first, by message otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from alembic.util import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from ledger.errors import DuplicateKey, LedgerError, LedgerUnavailable

__all__ = ["db_errors"]


@contextmanager
def db_errors(url: str, *, keys: Sequence[str] = (), busy_timeout_s: float = 0.0) -> Iterator[None]:
    """THE translation of SQLAlchemy / driver / Alembic exceptions into the ledger error tree.

    ``keys`` are the unique keys of the batch being written (to name a DuplicateKey).
    """
    try:
        yield
    except SQLAlchemyError as e:
        raise _classify(e, url, keys, busy_timeout_s) from e
    except CommandError as e:
        where = make_url(url).render_as_string(hide_password=True)
        raise LedgerUnavailable(f"ledger {where} schema migration failed: {e}") from e


def _classify(
    e: SQLAlchemyError, url: str, keys: Sequence[str], busy_timeout_s: float
) -> LedgerError:
    orig = getattr(e, "orig", None) or e
    msg = str(orig).strip()
    low = msg.lower()
    state = str(getattr(orig, "sqlstate", None) or "")  # PostgreSQL SQLSTATE (psycopg)
    where = make_url(url).render_as_string(hide_password=True)
    if isinstance(e, IntegrityError) and "unique_key" in low:
        named = [k for k in keys if k in msg]
        return DuplicateKey((named or list(keys) or ["<unknown>"])[0])
    if state == "55P03" or "locked" in low or "busy" in low:
        return LedgerUnavailable(
            f"ledger {where} is locked by another connection (waited "
            f"{busy_timeout_s}s); nothing was written - retry, or find and stop the "
            f"process holding the lock ({msg})"
        )
    if state == "42501" or "permission denied" in low:
        return LedgerUnavailable(
            f"ledger {where} refused the operation for lack of a privilege; nothing was "
            f"written - the role needs CONNECT, USAGE, SELECT and INSERT (ledger.pg_roles) ({msg})"
        )
    if state == "25006" or "readonly" in low or "read-only" in low:
        return LedgerUnavailable(
            f"ledger {where} is read-only; nothing was written - check the file and "
            f"directory permissions ({msg})"
        )
    if "disk" in low or "full" in low or "i/o" in low:
        return LedgerUnavailable(
            f"ledger {where} cannot write to disk; nothing was written - free space or "
            f"check the volume ({msg})"
        )
    lost = state.startswith(("08", "57P")) or (
        isinstance(e, DBAPIError) and e.connection_invalidated
    )
    if "connection failed" in low or ("connect" in low and "closed" not in low and not lost):
        return LedgerUnavailable(
            f"cannot connect to ledger {where}; start the database or fix the URL ({msg})"
        )
    if lost or "server closed" in low or "consuming input failed" in low:
        return LedgerUnavailable(
            f"lost the connection to ledger {where} (server stopped or restarted); this call "
            f"was not confirmed - retry, the next call reconnects ({msg})"
        )
    if "closed" in low:
        return LedgerUnavailable(f"ledger {where} connection is closed; reopen it ({msg})")
    return LedgerUnavailable(
        f"ledger {where} failed ({type(orig).__name__}: {msg}); nothing was written - "
        "check that the database is reachable and the schema is intact"
    )
