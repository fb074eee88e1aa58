"""`gapcheck verify`: run the claims registry, write report.json, report.md and figures.

Every claim runs its check (must pass) and then each of its planted faults (each must be
rejected, i.e. make the check fail).  The run passes iff every claim passes and every
planted fault is rejected.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, Sequence

from .checks import all_claims
from .context import Context
from .properties import no_shrinking
from .registry import CheckResult, Claim, _clean
from .runtime import current_umask

REPORT_VERSION = 1


def select_claims(ids: Sequence[str] | None) -> list[Claim]:
    claims = all_claims()
    if not ids:
        return claims
    known = {c.id: c for c in claims}
    wanted = [i.strip().upper() for i in ids if i.strip()]
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise KeyError(f"unknown claim id(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[i] for i in wanted]


@contextlib.contextmanager
def global_hypothesis_constants() -> Iterator[None]:
    """hypothesis (>= 6.131) also draws literals it collects from every *local* module imported
    so far (files outside site-packages and the stdlib), so the derandomized property examples
    would depend on the process's import history: a Dask worker's modules, the caller's own
    scripts, a source checkout vs an installed gapcheck.  Within this block it draws from its
    fixed global constants only, so a claim sees the same examples in every process (the
    serial run, a worker of `--workers`).  A no-op for a hypothesis without local constants."""
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:
        yield
        return
    original = getattr(providers, "_get_local_constants", None)
    cache = getattr(getattr(providers, "CONSTANTS_CACHE", None), "cache", None)
    if original is None or cache is None:
        yield
        return
    empty = Constants()
    providers._get_local_constants = lambda: empty
    cache.clear()  # allowed constants per choice type, computed with the local ones
    try:
        yield
    finally:
        providers._get_local_constants = original
        cache.clear()


def _run_check(claim: Claim, ctx: Context, fault: str | None) -> tuple[list[CheckResult], str | None, float]:
    t0 = time.perf_counter()
    try:
        with global_hypothesis_constants():
            if fault is None:
                res = claim.check(ctx, fault)
            else:
                with no_shrinking():
                    res = claim.check(ctx, fault)
        err = None
    except Exception as exc:  # a crashing check is reported as an error, never hidden
        res = []
        err = f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc)[-6:])
    return res, err, time.perf_counter() - t0


def run_claim(claim: Claim, ctx: Context, progress=None) -> dict[str, Any]:
    """Check one claim and its negative controls; returns the report entry."""
    t0 = time.perf_counter()
    res, err, secs = _run_check(claim, ctx, None)
    if progress:
        progress.update(1)
    passed = err is None and bool(res) and all(r.passed for r in res)
    evidence = sorted({r.evidence for r in res if r.passed})
    controls = []
    for fault in claim.faults:
        fres, ferr, fsecs = _run_check(claim, ctx, fault)
        if progress:
            progress.update(1)
        failed = [r.name for r in fres if not r.passed]
        controls.append({
            "fault": fault,
            "rejected": ferr is None and bool(failed),
            "failed_checks": failed,
            "error": ferr,
            "seconds": fsecs,
        })
    status = "error" if err else ("passed" if passed else "failed")
    return {
        **claim.summary(),
        "status": status,
        "error": err,
        "evidence": evidence,
        "checks": [r.to_dict() for r in res],
        "negative_controls": controls,
        "all_faults_rejected": all(c["rejected"] for c in controls),
        "seconds": time.perf_counter() - t0,
        "check_seconds": secs,
    }


def run_verify(ids: Sequence[str] | None = None, mode: str = "default", seed: int = 0, device: str = "auto",
               show_progress: bool = True, cluster: Any = None) -> tuple[dict[str, Any], Context]:
    """Check the selected claims (all by default) and their planted faults; returns the report
    (a JSON-safe dict, docs/report.md) and the run context (its caches feed the figures).

    With ``cluster`` (a :class:`proofs_check.distributed.Cluster`, or a ``ClientStart`` already
    starting one) the claims run in parallel on
    Dask workers; the report is the serial one apart from timings."""
    claims = select_claims(ids)
    ctx = Context(mode=mode, seed=seed, device=device)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    total = sum(1 + len(c.faults) for c in claims)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="gapcheck verify", unit="check", file=sys.stderr, leave=True,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")
    entries = []
    if cluster is not None:
        from .distributed import run_claims

        entries = run_claims(claims, ctx, cluster, bar)
    else:
        for c in claims:
            if bar:
                bar.set_postfix_str(c.id)
            entries.append(run_claim(c, ctx, bar))
    if bar:
        bar.close()
    ok = all(e["status"] == "passed" and e["all_faults_rejected"] for e in entries)
    import torch

    report = {
        "version": REPORT_VERSION,
        "tool": "gapcheck",
        "mode": mode,
        "seed": seed,
        "device": str(ctx.torch_device),
        "started": started,
        "seconds": time.perf_counter() - t0,
        "platform": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()},
        "sweep_gamma2": ctx.sweep_gamma2,
        "passed": ok,
        "summary": {
            "claims": len(entries),
            "passed": sum(e["status"] == "passed" for e in entries),
            "failed": [e["id"] for e in entries if e["status"] != "passed"],
            "faults_planted": sum(len(e["negative_controls"]) for e in entries),
            "faults_accepted": [f"{e['id']}:{c['fault']}" for e in entries for c in e["negative_controls"] if not c["rejected"]],
        },
        "claims": entries,
    }
    return _clean(report), ctx


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2e}"
    return str(v)


def _measured_required(c: dict[str, Any]) -> tuple[str, str]:
    """The 'measured' and 'required' cells of a check, by how it compares (registry.CheckResult)."""
    kind = c.get("comparison", "at_most")
    if kind == "holds":
        return ("holds" if c["passed"] else "does not hold"), "holds"
    if kind == "at_least":
        return _fmt(c["error"]), f"≥ {_fmt(c['tolerance'])}"
    return _fmt(c["error"]), f"≤ {_fmt(c['tolerance'])}"


def _cell(v: Any) -> str:
    """A Markdown table cell: pipes escaped, newlines flattened."""
    return str(v).replace("|", "\\|").replace("\n", " ")


def report_markdown(report: dict[str, Any], figures: Sequence[str] = ()) -> str:
    """Human-readable report (docs/report.md explains how to read it)."""
    L = []
    verdict = "PASSED" if report["passed"] else "FAILED"
    s = report["summary"]
    L.append(f"# gapcheck verification report — {verdict}\n")
    L.append(f"Mode `{report['mode']}`, seed {report['seed']}, device `{report['device']}`, {report['seconds']:.1f} s, "
             f"torch {report['platform']['torch']}, started {report['started']}.\n")
    L.append(f"{s['passed']}/{s['claims']} claims passed; {s['faults_planted']} planted faults, "
             f"{s['faults_planted'] - len(s['faults_accepted'])} rejected"
             + (f", **accepted: {', '.join(s['faults_accepted'])}**" if s["faults_accepted"] else "") + ".\n")
    L.append("| claim | title | status | evidence | negative controls (rejected / planted) | time (s) |")
    L.append("|---|---|---|---|---|---|")
    for e in report["claims"]:
        nc = e["negative_controls"]
        L.append(f"| {e['id']} | {_cell(e['title'])} | {e['status']} | {', '.join(e['evidence'])} | "
                 f"{sum(c['rejected'] for c in nc)}/{len(nc)} | {e['seconds']:.1f} |")
    if figures:
        L.append("\n## Figures\n")
        for f in figures:
            L.append(f"![{Path(f).stem}]({Path(f).name})\n")
    for e in report["claims"]:
        L.append(f"\n## {e['id']} — {e['title']}: {e['status']}\n")
        L.append(f"> {e['statement']}\n\nPaper: {e['paper']}. Assumptions: {e['assumptions']}. "
                 f"Models (all in default and --full mode): {', '.join(e['models']) or '—'}.\n")
        if e.get("error"):
            L.append(f"```\n{e['error']}\n```\n")
        L.append("| check | evidence | result | measured | required | required because |")
        L.append("|---|---|---|---|---|---|")
        estimates = []
        for c in e["checks"]:
            details = c["details"] if isinstance(c["details"], dict) else {}
            extra = ""
            fit = details.get("fit")
            if isinstance(fit, dict) and fit.get("order") is not None:
                extra = f" (observed order {_fmt(fit['order'])} ± {_fmt(fit['stderr'])})"
            ce = details.get("shrunk_counterexample")
            if ce:
                extra += f" — shrunk counterexample: {ce}"
            estimates += details.get("estimates") or []
            measured, required = _measured_required(c)
            L.append(f"| {_cell(c['name'] + extra)} | {c['evidence']} | {'pass' if c['passed'] else '**FAIL**'} | {measured} | "
                     f"{required} | {_cell(c['tolerance_source'] or '—')} |")
        if estimates:
            L.append("\nEstimates (± their standard or stated errors):\n")
            for est in estimates:
                L.append(f"- {est['name']}: {est['value']:.6g} ± {est['error']:.2g}")
        if e["negative_controls"]:
            L.append("\nNegative controls (planted faults that must be rejected):\n")
            for c in e["negative_controls"]:
                what = "rejected" if c["rejected"] else "**ACCEPTED (verification fails)**"
                why = f" — failing checks: {'; '.join(c['failed_checks'][:3])}" if c["failed_checks"] else ""
                err = f" — error: {c['error'].splitlines()[0]}" if c.get("error") else ""
                L.append(f"- `{c['fault']}`: {what}{why}{err}")
    return "\n".join(L) + "\n"


#: The files a report folder holds; a folder with anything else is never replaced.
REPORT_FILES = ("report.md", "report.json")
REPORT_SUFFIXES = (".png", ".svg")


def check_report_dir(out: Path) -> None:
    """Refuse, before any computation, an output folder that cannot take a report: a file, or a
    folder holding anything but a previous report (so a report never replaces user files)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not (p.name in REPORT_FILES or p.suffix in REPORT_SUFFIXES))
        if foreign:
            raise ValueError(f"--out {out}: the folder holds files that are not a gapcheck report "
                             f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); choose another folder")
    parent = out.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"--out {out}: cannot write into {parent}")


def write_report(report: dict[str, Any], ctx: Context, out: Path, plots: bool = True, progress: bool = False) -> list[str]:
    """Write report.json, report.md and (``plots``) the figures into ``out`` as a whole: all
    files go to a temporary folder beside it, which then replaces ``out`` in one rename, so an
    interrupted run leaves the old report or the new one, never a mix.  Returns the figure
    paths (PNG; SVGs lie beside them)."""
    out = Path(out)
    check_report_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        figures: list[str] = []
        if plots:
            from .plots import make_figures

            figures = make_figures(report, ctx, tmp, progress=progress)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(report_markdown(report, figures), encoding="utf-8")
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~current_umask())
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [str(out / Path(f).name) for f in figures]

