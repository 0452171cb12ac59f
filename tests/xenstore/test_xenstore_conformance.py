"""The conformance scripts (tests/helpers/xenstore_conformance.py) against every daemon.

The expected replies are what Debian's real C xenstored answers; where oxenstored differs the
script records its answer too, and docs/xenstore-differences.md lists those cases.
"""

from pathlib import Path

import pytest

from helpers import xenstore_conformance as conformance


@pytest.mark.parametrize("script", sorted(conformance.SCRIPTS))
def test_script(fresh_xenstored_daemon, script):
    xenstored_daemon = fresh_xenstored_daemon
    problems = conformance.run_script(xenstored_daemon.socket, conformance.SCRIPTS[script],
                                      xenstored_daemon.kind)
    assert problems == []


def test_differences_are_documented():
    doc = Path(__file__).resolve().parents[2] / "docs" / "xenstore-differences.md"
    text = doc.read_text()
    for _script, what, _c, _o in conformance.differences():
        assert what in text, f"{what!r} missing from {doc}"
