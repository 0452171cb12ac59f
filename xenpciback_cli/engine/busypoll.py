"""How long ``serve`` keeps watching a guest's page after answering, before it sleeps again.

Why poll at all: a guest's driver reads config space in bursts (enumeration, a BAR sizing, a
driver's probe), each op posted as soon as the last one was answered. Answering an op that
arrives by event channel costs a wake-up of the process and three system calls (the selector,
the read of the port, the write that unmasks it) before a byte of the op is looked at; under a
PV dom0 each system call is a round trip through Xen. Watching the page's ``_XEN_PCIF_active``
bit for a moment after the answer catches the next op of a burst with none of that - the kernel
does the like for block devices (io_poll) and KVM for halting vCPUs (halt_poll_ns).

Why adaptive: polling burns the CPU it polls on, so the window must pay for itself. It follows
KVM's rule. It starts closed. An op that arrives by event channel soon after the last answer
(within the largest window) says the window would have caught it: the window grows (doubling,
to at most the limit). An op that arrives later says polling would have been waste: the window
halves, and closes below ``START``. A poll that catches an op keeps the window as it is. A guest
that pauses between ops longer than the limit is never polled for; one in a burst is polled for
at most the limit per op.

The limit (``serve --busy-poll``): a number of microseconds, or ``auto`` (the default): as long
as ``AUTO_ANSWERS`` answers take this backend on this host (a running average), between
``AUTO_MIN`` and ``AUTO_MAX``. A guest's pause between two ops and our answer are slowed alike by
a slow host (an emulated dom0 runs everything ten to fifty times slower), so a fixed number of
microseconds right for one host is useless on the other; measured in answers it carries over,
and the CPU polling may burn stays a bounded multiple of the CPU the answers take.

A hostile guest could time its ops to come just inside the limit and keep a dom0 CPU polling
for it all the time; so a guest gets at most ``BUDGET`` seconds of polling per second of the
clock, then none until the next second.

Sans-IO: fed times and outcomes, it answers how long to poll; the serve loop owns the clock.
"""

from __future__ import annotations

from xenpciback_cli.errors import InputError

__all__ = ["AUTO", "AUTO_ANSWERS", "AUTO_MAX", "AUTO_MIN", "BUDGET", "START", "PollWindow",
           "parse_busy_poll"]

#: ``limit`` None: the automatic limit.
AUTO = None
#: The automatic limit is this many answers' time...
AUTO_ANSWERS = 8
#: ... and at least this (a native host's answer takes microseconds; a guest's pause between
#: two ops of a burst is tens of them) ...
AUTO_MIN = 100e-6
#: ... and at most this.
AUTO_MAX = 5e-3
#: The window a grow starts from; a shrink below it closes the window.
START = 10e-6
#: Seconds of polling one guest may have per second of the clock.
BUDGET = 0.25
#: The weight of the newest answer in the running average of an answer's time.
_WEIGHT = 1 / 16
#: The largest number of microseconds ``--busy-poll`` takes.
MAX_USEC = 100_000


def parse_busy_poll(text: str) -> float | None:
    """``auto`` -> :data:`AUTO`; microseconds (0: never poll) -> seconds."""
    word = text.strip().lower()
    if word == "auto":
        return AUTO
    if not word.isdigit() or int(word) > MAX_USEC:
        raise InputError(f"--busy-poll {text!r}: give 'auto' or microseconds from 0 to {MAX_USEC}")
    return int(word) / 1e6


class PollWindow:
    """One guest's poll window (seconds). ``limit``: seconds (0 turns polling off) or
    :data:`AUTO`."""

    __slots__ = ("_begun", "_second", "_spent", "answer_time", "answered_at", "fixed", "last_gap",
                 "window")

    def __init__(self, limit: float | None = AUTO) -> None:
        self.fixed = None if limit is None else max(0.0, limit)
        self.window = 0.0
        #: When the guest last got an answer (the serve loop's clock); None: not yet.
        self.answered_at: float | None = None
        #: The last answer-to-wake-up gap seen (seconds; None: none yet), for ``serve status``.
        self.last_gap: float | None = None
        #: The running average of how long an answer takes, from seeing the op to the notify.
        self.answer_time: float | None = None
        self._begun: float | None = None
        self._second = 0.0  # when the current second of the budget began
        self._spent = 0.0  # seconds polled in it

    @property
    def limit(self) -> float:
        if self.fixed is not None:
            return self.fixed
        if self.answer_time is None:
            return AUTO_MIN
        return min(AUTO_MAX, max(AUTO_MIN, AUTO_ANSWERS * self.answer_time))

    def may_poll(self, now: float) -> float:
        """How long to poll now: the window, unless this second's budget is spent (0)."""
        if now - self._second >= 1.0:
            self._second, self._spent = now, 0.0
        if self._spent >= BUDGET:
            return 0.0
        return self.window

    def polled(self, seconds: float) -> None:
        """Charge ``seconds`` of polling to the budget."""
        self._spent += seconds

    def begin(self, now: float) -> None:
        """An op was seen at ``now`` (woken for): the next :meth:`answered` times the answer.
        Ops caught by polling are not timed (one clock reading per op is enough)."""
        self._begun = now

    def answered(self, now: float) -> None:
        self.answered_at = now
        if self._begun is not None:
            took = now - self._begun
            self.answer_time = took if self.answer_time is None else \
                self.answer_time + _WEIGHT * (took - self.answer_time)
            self._begun = None

    def woken(self, now: float) -> None:
        """An op arrived by event channel at ``now``: grow or shrink by how long it waited."""
        self.begin(now)
        limit = self.limit
        self.window = min(self.window, limit)  # an automatic limit moves with the average
        if limit <= 0 or self.answered_at is None:
            return
        gap = self.last_gap = now - self.answered_at
        if gap <= limit:
            self.window = min(limit, max(START, self.window * 2))
        else:
            self.window /= 2
            if self.window < START:
                self.window = 0.0
