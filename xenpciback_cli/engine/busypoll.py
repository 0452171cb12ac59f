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
to at most ``limit``). An op that arrives later says polling would have been waste: the window
halves, and closes below ``START``. A poll that catches an op keeps the window as it is. A guest
that pauses between ops longer than ``limit`` is never polled for; one in a burst is polled for
at most ``limit`` per op.

Sans-IO: fed times and outcomes, it answers how long to poll; the serve loop owns the clock.
"""

from __future__ import annotations

__all__ = ["DEFAULT_LIMIT", "START", "PollWindow"]

#: The largest window, in seconds (``serve --busy-poll``). About ten times what one op takes
#: dom0 to answer natively, and less than one config read costs a guest through either backend
#: under emulation.
DEFAULT_LIMIT = 200e-6
#: The window a grow starts from; a shrink below it closes the window.
START = 10e-6


class PollWindow:
    """One guest's poll window (seconds); ``limit`` 0 turns polling off."""

    __slots__ = ("answered_at", "last_gap", "limit", "window")

    def __init__(self, limit: float = DEFAULT_LIMIT) -> None:
        self.limit = max(0.0, limit)
        self.window = 0.0
        #: When the guest last got an answer (the serve loop's clock); None: not yet.
        self.answered_at: float | None = None
        #: The last answer-to-wake-up gap seen (seconds; None: none yet), for ``serve status``.
        self.last_gap: float | None = None

    def answered(self, now: float) -> None:
        self.answered_at = now

    def woken(self, now: float) -> None:
        """An op arrived by event channel at ``now``: grow or shrink by how long it waited."""
        if self.limit <= 0 or self.answered_at is None:
            return
        gap = self.last_gap = now - self.answered_at
        if gap <= self.limit:
            self.window = min(self.limit, max(START, self.window * 2))
        else:
            self.window /= 2
            if self.window < START:
                self.window = 0.0
