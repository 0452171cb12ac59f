"""Any damage to a trace's fields - a value of another JSON type, out of range, missing - is a
bad trace (InputError, exit 2) or a trace that still reads, for replay and trace show, stats
and diff alike; never another exception."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.traces import driver_session, lines, write_lines
from xenpciback_cli.engine.replay import replay
from xenpciback_cli.engine.trace_view import diff, show, stats
from xenpciback_cli.errors import InputError

VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                   st.floats(allow_nan=False), st.text(max_size=20),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                        st.integers(), max_size=2))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.lists(st.tuples(st.integers(min_value=0, max_value=40), st.text(max_size=12)
                                 | st.sampled_from(["kind", "t", "domid", "guest", "host",
                                                    "code", "offset", "size", "value_in",
                                                    "value_out", "err", "entries", "vectors",
                                                    "config", "devices", "version"]),
                                 VALUES | st.just("DELETE")), min_size=1, max_size=3))
def test_damaged_traces_are_bad_input_or_read(tmp_path_factory, damage):
    tmp = tmp_path_factory.mktemp("fuzz")
    good = driver_session(tmp / "good.jsonl", 30, seed=5)
    items = lines(good)
    for where, key, value in damage:
        item = items[where % len(items)]
        if value == "DELETE":
            item.pop(key, None)
        else:
            item[key] = value
    path = write_lines(tmp / "bad.jsonl", items)
    for run in (lambda: replay(str(path)), lambda: list(show(str(path))),
                lambda: stats(str(path)), lambda: diff(str(good), str(path)),
                lambda: [json.dumps(e.as_dict()) + e.text(0.0) for e in show(str(path))]):
        try:
            run()
        except InputError:
            pass
