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
