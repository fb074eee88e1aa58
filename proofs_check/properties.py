"""Property-based checks (hypothesis) run programmatically inside `gapcheck verify`.

A property is a strategy and a predicate ``pred(example) -> (ok, message)``.  hypothesis
searches (derandomized: the same examples every run, no example database), and when the
predicate fails it *shrinks* the example; the message of the minimal failing example is
recorded in the report.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator


def _private_hypothesis_storage() -> None:
    """hypothesis keeps files (constants, examples) in ``./.hypothesis`` by default; a user's
    `gapcheck verify` must not leave that folder in their working directory.  Unless the user
    chose a folder (HYPOTHESIS_STORAGE_DIRECTORY), use a temporary one removed at exit."""
    if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
        tmp = tempfile.mkdtemp(prefix="gapcheck-hypothesis-")
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = tmp
        atexit.register(shutil.rmtree, tmp, True)


_private_hypothesis_storage()

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from .registry import CheckResult  # noqa: E402


class PropertyFailure(AssertionError):
    pass


#: Whether failing examples are shrunk.  Off while a planted fault is checked: there a
#: failure is expected and only its existence is reported, so shrinking would be wasted work.
_SHRINK: contextvars.ContextVar[bool] = contextvars.ContextVar("gapcheck_shrink", default=True)


@contextlib.contextmanager
def no_shrinking() -> Iterator[None]:
    token = _SHRINK.set(False)
    try:
        yield
    finally:
        _SHRINK.reset(token)


def run_property(name: str, strategy: st.SearchStrategy, pred: Callable[[Any], tuple[bool, str]], max_examples: int) -> CheckResult:
    """Run ``pred`` on ``max_examples`` examples of ``strategy``; pass iff it holds for all."""
    seen: list[int] = [0]

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if _SHRINK.get() else [])

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=phases)
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
