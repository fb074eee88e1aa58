"""Property-based checks (hypothesis) run programmatically inside `gapcheck verify`.

A property is a strategy and a predicate ``pred(example) -> (ok, message)``.  hypothesis
searches (derandomized: the same examples every run, no example database), and when the
predicate fails it *shrinks* the example; the message of the minimal failing example is
recorded in the report.
"""

from __future__ import annotations

from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .registry import CheckResult


class PropertyFailure(AssertionError):
    pass


def run_property(name: str, strategy: st.SearchStrategy, pred: Callable[[Any], tuple[bool, str]], max_examples: int) -> CheckResult:
    """Run ``pred`` on ``max_examples`` examples of ``strategy``; pass iff it holds for all."""
    seen: list[int] = [0]

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(strategy)
    def prop(ex: Any) -> None:
        seen[0] += 1
        ok, msg = pred(ex)
        if not ok:
            raise PropertyFailure(msg)

    try:
        prop()
    except PropertyFailure as exc:
        return CheckResult(name, "property", False, None, None, "", {"shrunk_counterexample": str(exc), "examples_run": seen[0]})
    return CheckResult(name, "property", True, None, None, "", {"examples": max_examples})
