"""Fixtures of the config-space tests (helpers live in tests/helpers/configspace.py)."""

from helpers.configspace import require_lspci  # noqa: F401  (a pytest fixture)
