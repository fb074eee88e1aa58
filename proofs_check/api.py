"""The public Python API of gapcheck (also exported from ``proofs_check``).

    import proofs_check as pc
    spec = pc.load_spec("examples/triangular.toml")      # a path, TOML text, or a dict
    ev = pc.evaluate(spec)                                # log p, ELBO*, gap, c_IMA (+ errors)
    ev.to_dict(); ev.columns()                            # JSON document; dict of numpy arrays
    d = pc.derive(spec)                                   # symbolic ε-expansions (sympy)
    rep = pc.verify(["C11"], mode="quick")                # the claims, as `gapcheck verify`
    pc.claims()                                           # the registry

Every call runs with the CLI's defaults: one torch thread (``GAPCHECK_THREADS`` overrides),
float64, device ``"auto"`` (CUDA when present).  The caller's torch thread setting is
restored afterwards.  Bad input raises :class:`theory.spec.SpecError` (a ``ValueError``)
with a message naming the problem.  docs/api.md documents every function and result type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from theory.spec import SpecError, SymbolicModel, loads_spec, model_from_dict
from theory.spec import load_spec as _load_path

from .evaluation import Evaluation, evaluate_spec
from .registry import Claim
from .runtime import torch_threads

__all__ = [
    "load_spec", "evaluate", "derive", "verify", "claims", "experiment", "certify",
    "Evaluation", "Derivation", "VerifyReport", "SpecError", "SymbolicModel", "Claim",
]

SpecLike = "str | Path | Mapping[str, Any] | SymbolicModel"


def load_spec(spec: str | Path | Mapping[str, Any] | SymbolicModel, name: str | None = None) -> SymbolicModel:
    """Parse a model spec (docs/spec.md) once, safely, into a symbolic model.

    ``spec`` is a path to a TOML file, TOML text (recognized by containing a newline or an
    ``=``), a dict with the same keys, or an already parsed :class:`SymbolicModel`."""
    if isinstance(spec, SymbolicModel):
        return spec
    if isinstance(spec, Mapping):
        return model_from_dict(spec, default_name=name or "model")
    if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec and "=" not in spec):
        path = Path(spec)
        if not path.is_file():
            raise SpecError(f"{path}: no such spec file")
        return _load_path(path)
    if isinstance(spec, str):
        return loads_spec(spec, name=name or "model")
    raise SpecError(f"a spec is a path, TOML text, a dict or a SymbolicModel, not {type(spec).__name__}")


def evaluate(spec: str | Path | Mapping[str, Any] | SymbolicModel, *, device: str = "auto", predictions: bool = True,
             log_px_method: str = "auto", elbo_method: str = "auto", max_memory: int | None = None,
             samples: int = 65536, seed: int = 0, workers: int | None = None,
             scheduler: str | None = None, on_result: Callable[[Any], None] | None = None,
             keep_results: bool = True) -> Evaluation:
    """log p_γ(x), ELBO*(x), the gap log p − ELBO* and c_IMA(f, z0) at x = f(z0) for every latent
    point and γ² of the spec, each with its error estimate (`gapcheck evaluate`).

    ``workers=N`` splits the latent points over a local Dask cluster of N processes,
    ``scheduler="tcp://host:8786"`` over an existing one (docs/distributed.md; the spec is then
    a path, TOML text or dict, and a script must call this under ``if __name__ == "__main__":``);
    the numbers are those of the serial run.  ``log_px_method`` (auto, gh, sparse, is),
    ``elbo_method`` (auto, tensor, sparse) and ``max_memory`` (bytes) are those of `gapcheck
    evaluate` (docs/json.md `method`, docs/performance.md).

    Returns an :class:`~proofs_check.evaluation.Evaluation`: ``.results`` (one
    :class:`numerics.sweep.PointResult` per point and γ²), ``.to_dict()`` (the JSON of
    docs/json.md), ``.columns()`` (a dict of numpy arrays).  ``on_result`` is called with each
    result as soon as it is computed (``proofs_check.evaluation.result_row(r)`` is its JSON row);
    with ``keep_results=False`` the results are only handed to it, so that many points (a
    generated ``latents = {sample = ...}``) take no memory: ``.results`` is then empty and
    ``.count`` says how many there were."""
    sym = load_spec(spec)
    from numerics.sweep import ELBO_METHODS, LOG_PX_METHODS

    if log_px_method not in LOG_PX_METHODS:
        raise SpecError(f"log_px_method must be one of {', '.join(LOG_PX_METHODS)}, got {log_px_method!r}")
    if elbo_method not in ELBO_METHODS:
        raise SpecError(f"elbo_method must be one of {', '.join(ELBO_METHODS)}, got {elbo_method!r}")
    if max_memory is not None and max_memory < 1:
        raise SpecError("max_memory must be a positive number of bytes")
    if samples < 2:
        raise SpecError("samples must be at least 2")
    cluster = _cluster(workers, scheduler)
    if cluster is not None:
        from .distributed import SpecSweep

        options = {"device": device, "predictions": predictions, "log_px_method": log_px_method, "is_samples": samples, "seed": seed,
                   "elbo_method": elbo_method, "max_memory": max_memory}
        with SpecSweep([(_spec_source(spec, sym), sym)], options, cluster) as sweep:
            return sweep.result(0, on_result, keep_results)
    with torch_threads():
        return evaluate_spec(sym, device=device, predictions=predictions, log_px_method=log_px_method,
                             elbo_method=elbo_method, max_memory=max_memory, is_samples=samples, seed=seed,
                             on_result=on_result, keep_results=keep_results)


def _cluster(workers: int | None, scheduler: str | None) -> Any:
    """The Dask cluster of ``workers`` / ``scheduler`` (proofs_check.distributed), or None."""
    from .distributed import Cluster
    from .runtime import UserError

    try:
        return Cluster.from_options(workers, scheduler)
    except UserError as exc:
        raise SpecError(str(exc).replace("--workers", "workers").replace("--scheduler", "scheduler")) from None


def _spec_source(spec: Any, sym: SymbolicModel) -> Any:
    """The spec as plain data for Dask workers: the file, the TOML text, or the dict (as JSON)."""
    import json

    from .distributed import SpecSource

    if isinstance(spec, SymbolicModel):
        raise SpecError("with workers or scheduler, pass the spec as a path, TOML text or dict: a parsed model is not sent to workers")
    if isinstance(spec, Mapping):
        try:
            data = json.loads(json.dumps(spec, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise SpecError(f"with workers or scheduler, a spec dict must hold plain values (str, numbers, lists, dicts): {exc}") from None
        return SpecSource(data=data, name=sym.name)
    if isinstance(spec, Path) or ("\n" not in spec and "=" not in spec):
        return SpecSource.from_path(spec)
    return SpecSource(text=spec, name="model")


@dataclass
class Derivation:
    """The symbolic ε-expansion of a spec at one latent point (or at a symbolic z0).

    ``coefficients`` (at a numeric point): c_IMA, a1 (gap = c_IMA + a1 ε + O(ε²)), μ1, s1, s2,
    and the reduced log p / ELBO* to O(ε), as floats (``theory.expansions.Expansion.as_floats``);
    ``expansion`` is the sympy object itself (``.latex()``, exact coefficients)."""

    model: SymbolicModel
    point: tuple[float, ...] | None
    expansion: Any = None
    coefficients: dict[str, Any] = field(default_factory=dict)

    def text(self, latex: bool = False) -> str:
        """The derivation as `gapcheck derive` prints it (plain text or Markdown + LaTeX)."""
        from theory.report import derivation_text

        return derivation_text(self.model, point=self.point, latex=latex)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.name, "point": None if self.point is None else list(self.point),
                "coefficients": self.coefficients}


def derive(spec: str | Path | Mapping[str, Any] | SymbolicModel) -> list[Derivation]:
    """The symbolic expansions of `gapcheck derive`: one :class:`Derivation` per latent point
    of the spec, or one at a symbolic z0 when the spec has no points."""
    from theory.expansions import expand_at

    sym = load_spec(spec)
    if not sym.points:
        return [Derivation(sym, None)]
    out = []
    for p in sym.points:
        e = expand_at(sym, p)
        out.append(Derivation(sym, tuple(float(v) for v in p), e, e.as_floats()))
    return out


@dataclass
class VerifyReport:
    """The result of :func:`verify`: ``passed``, the report dict (docs/report.md) as
    ``to_dict()``, and ``columns()`` (one row per check: claim, check, evidence, passed,
    error, tolerance)."""

    report: dict[str, Any]
    figures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])

    @property
    def claims(self) -> list[dict[str, Any]]:
        return self.report["claims"]

    def to_dict(self) -> dict[str, Any]:
        return self.report

    def columns(self) -> dict[str, np.ndarray]:
        rows = [(e["id"], c) for e in self.report["claims"] for c in e["checks"]]

        def num(v: Any) -> float:
            return float(v) if isinstance(v, (int, float)) else float("nan")

        return {
            "claim": np.array([i for i, _ in rows], dtype=object),
            "check": np.array([c["name"] for _, c in rows], dtype=object),
            "evidence": np.array([c["evidence"] for _, c in rows], dtype=object),
            "passed": np.array([bool(c["passed"]) for _, c in rows]),
            "error": np.array([num(c["error"]) for _, c in rows]),
            "tolerance": np.array([num(c["tolerance"]) for _, c in rows]),
        }


def verify(claim_ids: Sequence[str] | None = None, *, mode: str = "default", seed: int = 0, device: str = "auto",
           out: str | Path | None = None, plots: bool = False, progress: bool = False, workers: int | None = None,
           scheduler: str | None = None) -> VerifyReport:
    """Check claims (all by default) and their planted faults, as `gapcheck verify`.

    ``mode``: "quick", "default" or "full".  With ``out`` the report folder (report.md,
    report.json, figures if ``plots``) is written as `gapcheck verify --out` does.
    ``workers=N`` / ``scheduler="tcp://host:8786"`` check the claims in parallel on Dask
    (docs/distributed.md); the report is the serial one apart from timings."""
    from .verification import check_report_dir, run_verify, write_report

    if mode not in ("quick", "default", "full"):
        raise SpecError(f"mode must be 'quick', 'default' or 'full', got {mode!r}")
    if out is not None:
        check_report_dir(Path(out))
    cluster = _cluster(workers, scheduler)
    with torch_threads():
        report, ctx = run_verify(claim_ids, mode=mode, seed=seed, device=device, show_progress=progress, cluster=cluster)
        figures = write_report(report, ctx, Path(out), plots=plots, progress=progress) if out is not None else []
    return VerifyReport(report, figures)


def claims() -> list[Claim]:
    """The claims registry (C1–C17 and the negative controls N1, N2), in order; each record's
    ``summary()`` is its JSON form."""
    from .checks import all_claims

    return all_claims()


def experiment(names: Sequence[str] | None = None, *, mode: str = "quick", seeds: int | None = None, device: str = "auto",
               out: str | Path = "gapcheck-experiments", plots: bool = True, progress: bool = False) -> dict[str, Any]:
    """The trained-VAE experiments E1–E5 (`gapcheck experiment`): trains amortized VAEs and holds
    them against the exact ELBO*; writes results.json, report.md and figures into ``out`` and
    returns the results dict (docs/experiments.md)."""
    from .experiments import run_experiments

    with torch_threads():
        return run_experiments(names, mode=mode, device=device, seeds=seeds, out=out, progress=progress, plots=plots)


def certify(spec: str | Path | Mapping[str, Any] | SymbolicModel, *, prec: int | None = None, progress: bool = False,
            full_cov: bool = True) -> list[Any]:
    """`gapcheck certify`: rigorous Arb ball enclosures of log p, ELBO* (mean-field), the gap and
    c_IMA at every latent point and γ² of a d ≤ 2 spec (docs/certified.md).  One
    ``proofs_check.certification.CertifiedRow`` per point and γ²: ``intervals`` (decimal strings rounded
    outward), ``status`` per quantity (certified / lower or upper bound only / not certified: why),
    ``to_dict()``.  ``full_cov`` adds the full-covariance ELBO* and its gap (``--no-full-cov`` off)."""
    from .certification import certify_spec

    sym = load_spec(spec)
    with torch_threads():
        return certify_spec(sym, prec=prec, progress=progress, full_cov=full_cov)
