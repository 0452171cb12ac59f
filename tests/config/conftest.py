"""Fixtures of the config-space tests (helpers live in configspace_helpers)."""

from configspace_helpers import require_lspci  # noqa: F401  (a pytest fixture)
