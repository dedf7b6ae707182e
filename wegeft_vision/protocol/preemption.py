"""A worker told to stop by its scheduler: SIGTERM (preemption, `scancel`, `scontrol requeue`, the time limit) or the
warning signal SLURM sends ahead of the time limit (`--signal USR1|USR2@SECONDS`).

Inside `stopping_on(...)`, such a signal raises `Preempted` where the worker is. Lightning turns any interruption of a
fit into an exit of its own, so the signal is also recorded (`received()`): the grid study then gives the point back
(enqueued again, never counted as failed), the run's last epoch checkpoint stays for whoever trains the point next,
and the worker ends with `EXIT_CODE` instead of the 130 of a Ctrl-C.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

EXIT_CODE = 143  # 128 + SIGTERM, what a scheduler expects of a process it stopped

_received: list[str] = []


class Preempted(KeyboardInterrupt):
    """Raised in the worker when its scheduler signals it; `signal` names the signal (`SIGTERM`, `SIGUSR2`)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.signal = name


def received() -> str | None:
    """The name of the stopping signal this process received (inside `stopping_on`), or None."""
    return _received[-1] if _received else None


def _raise(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    first = not _received
    _received.append(name)
    if first:  # a second signal while the first unwinds is not raised again
        raise Preempted(name)


@contextmanager
def stopping_on(signals: Sequence[signal.Signals]) -> Iterator[None]:
    """Within the block, each of `signals` raises `Preempted` (once) and is recorded; the handlers and the record are
    restored afterwards."""
    previous = {s: signal.getsignal(s) for s in signals}
    _received.clear()
    try:
        for s in signals:
            signal.signal(s, _raise)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
