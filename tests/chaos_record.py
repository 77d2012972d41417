"""The fault-injection suite's record: every test marked ``chaos`` injects one fault, asserts what must hold and
reports its figures through the ``chaos`` fixture::

    def test_x(chaos):
        chaos.fault("pretraining", "SIGKILL of rank 1 mid-epoch", "the rerun resumes after the last commit")
        ...                                  # inject, assert
        chaos.figure("work lost (s)", 9.1)

At the end of the session the scenarios (with whether their test passed) are merged into a JSON record,
``var/chaos/results.json`` (``TLPIPE_CHAOS_RECORD`` elsewhere); ``scripts/chaos_table.py`` prints it as the
README's table. ``make chaos`` runs the marked tests alone; ``make test`` runs them with everything else.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = Path(os.environ.get("TLPIPE_CHAOS_RECORD") or ROOT / "var" / "chaos" / "results.json")
_SCENARIOS: list[dict] = []


def outage_seconds() -> float:
    """How long the suite keeps a server down: 30 s in ``make chaos``, shorter inside ``make test``."""
    return float(os.environ.get("TLPIPE_CHAOS_OUTAGE_SECONDS", "10"))


class Scenario:
    def __init__(self, test_id: str):
        self.entry: dict = {"id": test_id, "figures": {}}
        self.others: list[Scenario] = []

    def fault(self, area: str, fault: str, holds: str) -> "Scenario":
        self.entry.update(area=area, fault=fault, holds=holds)
        return self

    def figure(self, name: str, value) -> None:
        self.entry["figures"][name] = round(value, 3) if isinstance(value, float) else value

    def another(self, name: str) -> "Scenario":
        """A second scenario injected by the same test (a long run that takes two faults), recorded beside it."""
        other = Scenario(f"{self.entry['id']}#{name}")
        self.others.append(other)
        return other


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.chaos_passed = report.passed


@pytest.fixture
def chaos(request):
    scenario = Scenario(request.node.nodeid)
    started = time.monotonic()
    yield scenario
    for one in (scenario, *scenario.others):
        if "fault" in one.entry:
            one.entry["passed"] = bool(getattr(request.node, "chaos_passed", False))
            one.entry["test_seconds"] = round(time.monotonic() - started, 1)
            _SCENARIOS.append(one.entry)


def pytest_sessionfinish(session):
    if not _SCENARIOS:
        return
    try:
        previous = json.loads(RECORD.read_text())["scenarios"]
    except (OSError, ValueError, KeyError):
        previous = []
    ran = {s["id"] for s in _SCENARIOS}
    scenarios = [s for s in previous if s["id"] not in ran] + _SCENARIOS
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(
        json.dumps(
            {
                "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                "outage_seconds": outage_seconds(),
                "scenarios": sorted(scenarios, key=lambda s: (s.get("area", ""), s["id"])),
            },
            indent=2,
        )
    )
