"""attach/detach --timeout: nan, inf and negative are bad input (exit 2, one line), checked
before any xenstore is opened (a nan wait used to time out at once, exit 1)."""

import pytest

from xenpciback_cli.cli import main


@pytest.mark.parametrize("command", ["attach", "detach"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(tmp_path, capsys, command, value):
    with pytest.raises(SystemExit) as stop:
        main(["--sandbox", str(tmp_path / "none"), command, "1", "03:00.0", "--timeout", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--timeout" in err[0] and "seconds" in err[0]


#: The other duration options, each with the least it takes and the words before it.
OTHERS = {
    "sandbox guest --timeout": (["sandbox", "guest", "1", "--timeout"], 0.1),
    "sandbox aer --timeout": (["sandbox", "aer", "03:00.0", "--timeout"], 0.1),
    "serve foreground --aer-timeout": (["serve", "foreground", "--aer-timeout"], 0.1),
    "xenstore watch --timeout": (["xenstore", "watch", "/local", "--timeout"], 0),
    "status --wait": (["status", "--domid", "1", "--wait"], 0),
}


@pytest.mark.parametrize(("option", "value"), [(option, value) for option in OTHERS
                                                for value in ("nan", "inf", "-inf", "-1", "0.05")
                                                if not float(value) >= OTHERS[option][1]])
def test_every_duration_option_refuses_what_is_no_number_of_seconds(tmp_path, capsys, option, value):
    words, minimum = OTHERS[option]
    with pytest.raises(SystemExit) as stop:
        main(["--sandbox", str(tmp_path / "none"), *words, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    flag = words[-1]
    assert len(err) == 1 and flag in err[0] and f"seconds ({minimum:g} or more, finite)" in err[0], err
