"""One run from a Scenario to a run directory: ``netfl run``'s layer over ``netfl.simulate``."""

from __future__ import annotations

from typing import Any

from netfl.api import Interrupted, RunError, simulate_into, summarize
from netfl.scenario import Scenario

__all__ = ["Interrupted", "RunError", "run", "summarize"]


def run(scenario: Scenario, out: str | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run a scenario into ``out`` (default: ``output.dir`` or runs/<name>/<time>); returns
    its summary, which says completed, interrupted or diverged (a failed run raises)."""
    return simulate_into(scenario, out, progress=progress).summary
