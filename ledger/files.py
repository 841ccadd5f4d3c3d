"""Files as private as keys: the ledger's database files, its dual-write sink, and logs that
carry decision data are 0600 in 0700 directories, whatever the process umask.

A ledger file holds every raw payload; any local user who can read it bypasses the
guarded, recorded reads. So:

* ``private_dir(path)`` creates each missing directory level 0700 (``chmod`` after
  ``mkdir``, because ``mkdir``'s mode passes through the umask and ``parents=True``
  ignores it for the levels above); existing directories are left as they are.
* ``create_private(path)`` creates a file 0600 (``O_EXCL``, no symlink followed) and
  ``open_private_append(path)`` opens one for appending, creating it 0600 if missing.
  SQLite gives its ``-wal`` and ``-shm`` files the mode of the database file, so a
  database created 0600 keeps them 0600 too.
* ``check_private(path, what)`` refuses (LedgerUnavailable) a file readable or writable
  by group or others, naming it and the ``chmod`` that fixes it. ``SqlLedger`` runs it
  on the SQLite database and its ``-wal``/``-shm`` at every open, and the sink on open,
  so a server never starts on a world-readable ledger.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from ledger.errors import LedgerUnavailable

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "check_private",
    "create_private",
    "open_private_append",
    "private_dir",
]

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """Create ``path`` and any missing parents, each 0700; leave existing ones alone."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile
        os.chmod(d, DIR_MODE)


def create_private(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 (parents 0700); False if it already existed."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken bits from the owner too
    finally:
        os.close(fd)
    return True


def open_private_append(path: Path) -> BinaryIO:
    """``path`` opened for unbuffered appending; created 0600 (parents 0700) if missing."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    try:
        if os.fstat(fd).st_size == 0:
            os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "ab", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def check_private(path: Path, what: str) -> None:
    """Raise LedgerUnavailable if ``path`` exists and group or others may read or write it."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        raise LedgerUnavailable(
            f"{what} {path} has mode {mode:04o}: group or others may read it (every raw "
            f"payload, past the recorded reads). Refusing to start; as its owner run "
            f"`chmod 600 {path}` (and `chmod 700 {path.parent}`), then start again"
        )
