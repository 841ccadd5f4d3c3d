"""Progress lines for long CLI work (verify, export, bench), on stderr."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """Call with (done, total); prints at most every ``every_s`` seconds and at the end."""

    def __init__(self, label: str, *, every_s: float = 0.5) -> None:
        self.label = label
        self.every_s = every_s
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.every_s:
            return
        self._last = now
        pct = 100.0 * done / total if total else 100.0
        line = f"{self.label}: {done:,}/{total:,} ({pct:5.1f}%)"
        if self._tty:
            end = "\n" if done >= total else ""
            sys.stderr.write(f"\r{line}{end}")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
