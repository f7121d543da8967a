"""A stop requested by Ctrl-C or SIGTERM, kept until it is acted on. Some libraries catch the
KeyboardInterrupt a signal raises inside them (and carry on); long loops call `check()` between
steps so that such a request still ends the command at the next step."""

from __future__ import annotations

import signal

_requested: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process was so that cleanup runs."""


def request(signum: int) -> None:
    """Record a stop requested by signal `signum`, for `check()` to act on."""
    _requested.append(signum)


def requested() -> int | None:
    """The signal of the last stop requested, or None."""
    return _requested[-1] if _requested else None


def check() -> None:
    """Raise the interrupt again if a stop was requested and swallowed on the way."""
    if _requested:
        raise Terminated if _requested[-1] == signal.SIGTERM else KeyboardInterrupt
