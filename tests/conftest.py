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
    parser.addoption(
        "--lab-keep",
        action="store_true",
        default=False,
        help="leave the last lab VM up after the session (appliance lab exec/down by hand)",
    )
    parser.addoption(
        "--lab-reuse",
        action="store_true",
        default=False,
        help="while iterating: use a running lab of the same topology as it is (implies --lab-keep)",
    )


@pytest.fixture(scope="session")
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True only when pytest ran with --update-golden: golden files are never rewritten silently."""
    return bool(request.config.getoption("--update-golden"))


# --- lab (tests/lab/conftest.py) ---------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed lab test carries every node's daemon logs (syslog, FRR, charon) in its report."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        collect = getattr(value, "collect_logs", None)
        if callable(collect):
            for node, text in collect().items():
                report.sections.append((f"lab logs: {node}", text))
            break
