"""The progress bar ``replay`` shows on a long trace: on stderr, only on a terminal, and not for
a short job."""

from __future__ import annotations

import io

from xenpciback_cli.cli.terminal import Terminal


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_on_a_terminal_for_a_long_job():
    err, out = FakeTty(), io.StringIO()
    term = Terminal(stdout=out, stderr=err, color=False)
    with term.bar("replaying", total=1 << 23) as update:
        assert update is not None
        update(1 << 22, 1 << 23)
    assert "replaying" in err.getvalue() and out.getvalue() == ""


def test_no_bar_in_a_pipe_or_for_a_short_job():
    term = Terminal(stdout=io.StringIO(), stderr=io.StringIO())
    with term.bar("replaying", total=1 << 30) as update:
        assert update is None
    term = Terminal(stdout=io.StringIO(), stderr=FakeTty())
    with term.bar("replaying", total=1000) as update:
        assert update is None
