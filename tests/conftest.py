"""Shared pytest options and fixtures (each section belongs to one feature; keep additions additive)."""

from __future__ import annotations

import pytest

# --- golden files (tests/unit/test_render_golden.py) ------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/** from the current renderers instead of comparing (review the git diff!)",
    )


@pytest.fixture(scope="session")
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True only when pytest ran with --update-golden: golden files are never rewritten silently."""
    return bool(request.config.getoption("--update-golden"))
