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
import gc
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, Sequence


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
from hypothesis.errors import Unsatisfiable  # noqa: E402

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


def _tally(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of the categorical entries (str, int) and [min, max] of the float entries of
    per-example summaries: the distribution of the examples a property actually ran."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for s in summaries for k in s):
        vals = [s[key] for s in summaries if key in s]
        if all(isinstance(v, float) for v in vals):
            out[key] = [min(vals), max(vals)]
        else:
            counts: dict[str, int] = {}
            for v in vals:
                counts[str(v)] = counts.get(str(v), 0) + 1
            out[key] = dict(sorted(counts.items()))
    return out


def run_property(name: str, strategy: st.SearchStrategy, pred: Callable[[Any], tuple[bool, str]], max_examples: int,
                 summarize: Callable[[Any], dict[str, Any]] | None = None) -> CheckResult:
    """Run ``pred`` on ``max_examples`` examples of ``strategy``; pass iff it holds for all of
    them and hypothesis produced that many valid examples (examples rejected by ``assume``
    do not count: a property that ran fewer examples than promised is not evidence).

    On failure the details hold the message and the repr of the shrunk (minimal) failing
    example; on success, with ``summarize``, the tally of the examples run (:func:`_tally`)."""
    seen: list[int] = [0]
    summaries: list[dict[str, Any]] = []
    failing: list[str] = []

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if _SHRINK.get() else [])

    failures: dict[str, str] = {}

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=phases)
    @given(strategy)
    def prop(ex: Any) -> None:
        key = repr(ex)
        # hypothesis replays the final failing example once more before raising; the
        # predicates are deterministic, so a known failure's verdict is not recomputed
        msg = failures.get(key)
        if msg is None:
            ok, msg = pred(ex)
            if ok:
                seen[0] += 1
                if summarize is not None:
                    summaries.append(summarize(ex))
                return
            failures[key] = msg
        # one raise statement for both paths: hypothesis tells bugs apart by where they raise.
        # The minimal failing example is replayed last, so ``failing`` ends as its repr.
        failing[:] = [key]
        raise PropertyFailure(msg)

    # hypothesis allocates many small objects; with the large heap a verification run holds
    # (sympy expansions, sweeps) every full collection would rescan all of it.  Objects that
    # exist before the run are frozen out of collection meanwhile (and unfrozen after).
    gc.freeze()
    try:
        prop()
    except PropertyFailure as exc:
        return CheckResult(name, "property", False, None, None, "",
                           {"shrunk_counterexample": str(exc), "example": failing[0] if failing else "", "examples_passed": seen[0]})
    except Unsatisfiable as exc:
        return CheckResult(name, "property", False, None, None, "",
                           {"error": f"too few valid examples: {exc}", "examples": seen[0], "examples_required": max_examples})
    finally:
        gc.unfreeze()
    details: dict[str, Any] = {"examples": seen[0], "examples_required": max_examples}
    if summarize is not None:
        details["distribution"] = _tally(summaries)
    return CheckResult(name, "property", seen[0] >= max_examples, None, None, "", details)


def split_examples(total: int, parts: int) -> list[int]:
    """``total`` examples over ``parts`` strata as evenly as possible, the first ones getting
    the remainder, at least one each."""
    base, extra = divmod(total, parts)
    return [max(1, base + (i < extra)) for i in range(parts)]


def run_property_strata(name: str, strata: Sequence[tuple[str, st.SearchStrategy]], pred: Callable[[Any], tuple[bool, str]],
                        max_examples: int, summarize: Callable[[Any], dict[str, Any]] | None = None) -> CheckResult:
    """:func:`run_property` over each stratum (e.g. each decoder family) in turn, with the
    examples split by :func:`split_examples`: with few examples a single strategy could leave
    a family out, this cannot.  Passes iff every stratum passes; stops at the first failing
    stratum, whose shrunk counterexample is reported."""
    runs: dict[str, dict[str, Any]] = {}
    total = 0
    for (label, strategy), n in zip(strata, split_examples(max_examples, len(strata))):
        res = run_property(f"{name} [{label}]", strategy, pred, n, summarize)
        if not res.passed:
            return CheckResult(name, "property", False, None, None, "", {"stratum": label, **res.details})
        runs[label] = res.details
        total += res.details["examples"]
    details: dict[str, Any] = {"examples": total, "examples_required": max_examples, "strata": runs}
    if summarize is not None:
        merged: dict[str, Any] = {}
        for d in runs.values():
            for key, v in d.get("distribution", {}).items():
                if isinstance(v, list):
                    old = merged.get(key, v)
                    merged[key] = [min(old[0], v[0]), max(old[1], v[1])]
                else:
                    acc = merged.setdefault(key, {})
                    for k, c in v.items():
                        acc[k] = acc.get(k, 0) + c
        details["distribution"] = {k: (dict(sorted(v.items())) if isinstance(v, dict) else v) for k, v in merged.items()}
    return CheckResult(name, "property", True, None, None, "", details)
