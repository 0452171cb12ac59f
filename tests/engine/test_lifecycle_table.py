"""engine/lifecycle.py names real commands and real engine functions."""

from __future__ import annotations

import importlib

from xenpciback_cli.cli import cli
from xenpciback_cli.engine.lifecycle import TRANSITIONS, Place


def test_every_row_names_a_command_and_an_engine_function():
    for before, after, command, function in TRANSITIONS:
        assert before != after
        assert command.split()[0] in cli.list_commands(None)
        module, _, attr = function.rpartition(".")
        if module.endswith(".Seizer"):
            module, attr = module.rpartition(".")[0], f"Seizer.{attr}"
        obj = importlib.import_module(f"xenpciback_cli.{module}")
        for part in attr.split("."):
            obj = getattr(obj, part)
        assert callable(obj), function


def test_every_place_is_reached_and_left():
    assert {row[1] for row in TRANSITIONS} | {row[0] for row in TRANSITIONS} == set(Place)
