"""``serve``'s poll window (engine/busypoll.py): it opens only for a guest whose ops come back
to back, closes for one that pauses, and the serve loop answers by polling with no wake-up."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest

from xenpciback_cli.engine.busypoll import (
    AUTO,
    AUTO_ANSWERS,
    AUTO_MAX,
    AUTO_MIN,
    START,
    PollWindow,
    parse_busy_poll,
)
from xenpciback_cli.errors import InputError
from xenpciback_cli.pv.codec import read_flags, set_flag_bits


def test_the_window_starts_closed_and_grows_for_ops_that_come_back_to_back():
    window = PollWindow(limit=200e-6)
    window.woken(1.0)  # no answer yet: nothing to learn from
    assert window.window == 0
    grown = []
    for step in range(8):
        window.answered(step * 1.0)
        window.woken(step * 1.0 + 50e-6)  # each op 50 us after the last answer
        grown.append(window.window)
    assert grown[0] == START
    assert grown == sorted(grown) and grown[-1] == 200e-6  # doubling, capped at the limit


def test_the_window_halves_for_a_guest_that_pauses_and_closes_below_the_start():
    window = PollWindow(limit=200e-6)
    window.window = 200e-6
    widths = []
    for step in range(6):
        window.answered(step * 1.0)
        window.woken(step * 1.0 + 0.5)  # half a second later: polling would have been waste
        widths.append(window.window)
    assert widths[0] == 100e-6 and widths[-1] == 0.0
    assert all(w == 0 or w >= START for w in widths)


def test_a_limit_of_zero_never_opens_the_window():
    window = PollWindow(limit=0)
    window.answered(1.0)
    window.woken(1.0 + 1e-6)
    assert window.window == 0


def _answers(window: PollWindow, took: float, count: int = 200) -> None:
    now = 10.0
    for _ in range(count):
        window.begin(now)
        now += took
        window.answered(now)


@pytest.mark.parametrize(("took", "limit"), [
    (1e-6, AUTO_MIN),                       # a native host: the floor
    (300e-6, AUTO_ANSWERS * 300e-6),        # an emulated dom0: 8 answers' time
    (10e-3, AUTO_MAX),                      # anything slower: the ceiling
])
def test_the_automatic_limit_is_measured_in_answers_on_this_host(took, limit):
    window = PollWindow(AUTO)
    assert window.limit == AUTO_MIN  # nothing measured yet
    _answers(window, took)
    assert window.limit == pytest.approx(limit, rel=1e-3)


def test_on_a_slow_host_the_automatic_limit_opens_for_a_slow_guests_bursts():
    """A gap of 1 ms between ops would never open a 200 us window; on a host where an answer
    takes 300 us the automatic one does, and a fixed one of the same width does not."""
    auto, fixed = PollWindow(AUTO), PollWindow(200e-6)
    for window in (auto, fixed):
        now = 100.0
        for _ in range(12):  # woken 1 ms after each answer; each answer takes 300 us
            window.woken(now)
            now += 300e-6
            window.answered(now)
            now += 1e-3
    assert auto.window > 1e-3 >= fixed.window == 0
    assert auto.limit == pytest.approx(AUTO_ANSWERS * 300e-6)


@pytest.mark.parametrize(("text", "limit"), [("auto", AUTO), ("AUTO", AUTO), ("0", 0.0),
                                             ("250", 250e-6)])
def test_busy_poll_option_values(text, limit):
    assert parse_busy_poll(text) == limit


@pytest.mark.parametrize("text", ["-1", "1.5", "fast", "", "100001", "nan"])
def test_busy_poll_option_refuses_what_is_not_a_limit(text):
    with pytest.raises(InputError, match="--busy-poll"):
        parse_busy_poll(text)


# -- the serve loop --------------------------------------------------------------------------
class _Channel:
    """Notify is where a fast guest posts its next op: ``posts`` more times, then it pauses."""

    def __init__(self, page: memoryview, posts: int) -> None:
        self.page, self.posts, self.drains, self.notified, self.rearmed = page, posts, 0, 0, 0

    def drain(self) -> int:
        self.drains += 1
        return 1

    def rearm(self) -> None:
        self.rearmed += 1

    def notify(self) -> None:
        self.notified += 1
        if self.posts > 0:
            self.posts -= 1
            set_flag_bits(self.page, set_mask=1)


def _server_with_guest(busy_poll: float, posts: int):
    from xenpciback_cli.engine.serve import Guest, Server

    server = Server(None, None, None, None, busy_poll=busy_poll)  # type: ignore[arg-type]
    page = memoryview(bytearray(4096))
    answered: list[int] = []
    session = SimpleNamespace(process=lambda p: answered.append(1), events=deque(), devices={},
                              recorded_device=None)
    guest = Guest(domid=3, xenbus=None, session=session)  # type: ignore[arg-type]
    guest.poll = PollWindow(busy_poll)
    guest.channel = _Channel(page, posts)  # type: ignore[assignment]
    guest.mapping = SimpleNamespace(page=page)  # type: ignore[assignment]
    return server, guest, page, answered


@pytest.mark.parametrize("busy_poll", [0.0, 0.05])
def test_serve_answers_a_burst_by_polling_only_once_the_window_is_open(busy_poll):
    server, guest, page, answered = _server_with_guest(busy_poll, posts=5)
    try:
        set_flag_bits(page, set_mask=1)
        server.serve_one(guest)  # the first wake-up: nothing learnt yet, one op
        assert len(answered) == 1 and guest.ops_polled == 0
        server.serve_one(guest)  # the next op came at once: the window opens (if allowed)
        if busy_poll:
            assert len(answered) == 6 and guest.ops_polled == 4  # the rest of the burst
            assert guest.channel.drains == 2                     # with no wake-up between
            assert not read_flags(page) & 1                      # the burst is over
        else:
            assert len(answered) == 2 and guest.ops_polled == 0
        assert guest.channel.rearmed == 2  # unmasked once per wake-up, after the answers
    finally:
        server.close()


def test_a_guest_that_never_pauses_yields_after_a_bounded_burst():
    from xenpciback_cli.engine.serve import MAX_POLLED

    server, guest, page, answered = _server_with_guest(0.05, posts=10 * MAX_POLLED)
    try:
        guest.poll.window = 0.05
        guest.poll.answered(0.0)
        set_flag_bits(page, set_mask=1)
        server.serve_one(guest)
        assert len(answered) == 1 + MAX_POLLED and guest.pending  # the others' turn, soon its own
        assert read_flags(page) & 1  # its next op waits for the next round, not lost
    finally:
        server.close()


def test_a_bad_busy_poll_is_one_line_before_serve_opens_anything(sandbox):
    from helpers.cli import invoke

    res = invoke("--sandbox", sandbox, "serve", "foreground", "--busy-poll", "fast")
    assert res.code == 2 and res.err.strip().count("\n") == 0
    assert "--busy-poll 'fast': give 'auto' or microseconds" in res.err


def test_a_guest_gets_at_most_its_budget_of_polling_per_second():
    """A guest timing its ops just inside the limit cannot keep a dom0 CPU polling for it."""
    from xenpciback_cli.engine.busypoll import BUDGET

    window = PollWindow(5e-3)
    window.window = 5e-3
    now, polled = 50.0, 0.0
    while now < 51.0 - 5e-3:  # one second of polls that each run the whole window
        width = window.may_poll(now)
        if width:
            window.polled(width)
            polled += width
        now += 5e-3
    assert BUDGET <= polled < BUDGET + 5e-3
    assert window.may_poll(51.0) == 5e-3  # the next second: a fresh budget
