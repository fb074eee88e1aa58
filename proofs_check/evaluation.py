"""`gapcheck evaluate`: log p_γ(x), ELBO*(x), the gap and c_IMA for a user's model spec.

The numerics are :func:`numerics.sweep.evaluate_points`; this module joins them with the
spec (theory.spec) and the symbolic predictions (theory.expansions) and returns an
:class:`Evaluation` (``to_dict()`` for JSON, ``columns()`` for a table of numpy arrays).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from numerics.models import resolve_device
from numerics.sweep import PointResult, evaluate_points
from theory.spec import SpecError, SymbolicModel, point_floats

from .bridge import log_normalizers, numeric_model

__all__ = ["Evaluation", "evaluate_spec", "attach_predictions", "result_row"]


@dataclass
class Evaluation:
    """The result of evaluating one spec: one :class:`numerics.sweep.PointResult` per
    (latent point, γ²), points outer."""

    model: SymbolicModel
    results: list[PointResult]
    seconds: float
    device: str
    count: int | None = None  # results computed (len(results) unless they were not kept)

    @property
    def n_results(self) -> int:
        """How many results were computed (also when they were streamed and not kept)."""
        return len(self.results) if self.count is None else self.count

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of `gapcheck evaluate --json` (docs/json.md)."""
        m = self.model
        return {
            "model": {"name": m.name, "d": m.d, "n": m.n, "decoder": [str(c) for c in m.decoder], "prior": m.prior_label},
            "device": self.device,
            "seconds": self.seconds,
            "results": [result_row(r) for r in self.results],
        }

    def columns(self) -> dict[str, np.ndarray]:
        """A columnar view (dict of equal-length numpy arrays, one row per result), e.g. for
        ``pandas.DataFrame(ev.columns())``.  Vector quantities get one column per component
        (``latent_1``, ``mu_star_1``, ...)."""
        rs = self.results
        cols: dict[str, np.ndarray] = {}
        d = self.model.d
        for k in range(d):
            cols[f"latent_{k + 1}"] = np.array([r.latent[k] for r in rs])
        cols["gamma2"] = np.array([r.gamma2 for r in rs])
        for name in ("log_px", "elbo_star", "gap"):
            cols[name] = np.array([getattr(r, name).value for r in rs])
            cols[f"{name}_error"] = np.array([getattr(r, name).error for r in rs])
        cols["c_ima"] = np.array([r.c_ima for r in rs])
        cols["l_ima"] = np.array([r.l_ima for r in rs])
        for k in range(d):
            cols[f"mu_star_{k + 1}"] = np.array([r.mu_star[k] for r in rs])
            cols[f"s_star_{k + 1}"] = np.array([r.s_star[k] for r in rs])
        cols["n_modes"] = np.array([r.n_modes for r in rs])
        cols["flags"] = np.array([",".join(r.flags) for r in rs], dtype=object)
        return cols


#: (point, γ²) evaluations handed to the numerics at once: a chunk holds max(1, POINT_CHUNK //
#: number of γ²) points with all their γ².  It bounds memory for specs with many points; larger
#: chunks vectorize better.  Measured on the 2-core development machine, 2-D model, one γ²,
#: 2048 points: 32 per chunk 105 points per CPU second (peak 380 MB), 128: 142, 256: 178
#: (580 MB), 512: 173 (800 MB), 2048: 149 (1.45 GB).
POINT_CHUNK = 256


def default_chunk(sym: SymbolicModel) -> int:
    """Latent points per batch of :func:`evaluate_spec` (and of each Dask task's batches):
    :data:`POINT_CHUNK` evaluations' worth, every γ² of a point in the batch."""
    return max(1, POINT_CHUNK // max(1, len(sym.gamma2)))


def result_row(r: PointResult) -> dict[str, Any]:
    """The JSON row of one result (docs/json.md): ``PointResult.to_dict()``, with
    ``"prediction": null`` and ``"prediction_skipped"`` (the reason) when the prediction was asked
    for but refused for its size (theory.expansions.PredictionSkipped)."""
    row = r.to_dict()
    note = getattr(r, "prediction_skipped", None)
    if note:
        row["prediction"] = None
        row["prediction_skipped"] = note
    return row


def evaluate_spec(sym: SymbolicModel, device: str = "auto", predictions: bool = True, log_px_method: str = "auto",
                  is_samples: int = 65536, seed: int = 0, progress: bool = False,
                  on_result: Callable[[PointResult], None] | None = None, chunk: int | None = None,
                  keep_results: bool = True, elbo_method: str = "auto", max_memory: int | None = None) -> Evaluation:
    """Run `gapcheck evaluate` on a parsed spec; raises SpecError/ModelError on bad input.

    The latent points are evaluated ``chunk`` at a time (default: :data:`POINT_CHUNK` evaluations'
    worth), every γ² of a point in one batch, so memory does not grow with the number of
    points; ``on_result`` is called with each result as soon as its chunk is done (streaming,
    e.g. JSON Lines), and ``progress`` shows a tqdm bar over the points on stderr.  With ``keep_results=False`` the results are only handed to
    ``on_result`` (``Evaluation.results`` stays empty; ``Evaluation.count`` counts them), so that
    10^6 rows streamed to a file take no memory.  ``log_px_method``, ``elbo_method`` and
    ``max_memory`` (bytes; None: numerics.quadrature.DEFAULT_MAX_MEMORY) choose the estimators and
    their memory budget (:func:`numerics.sweep.evaluate_points`)."""
    if not sym.gamma2:
        raise SpecError("spec has no 'gamma2' (a list of decoder precisions γ² > 0)")
    if not len(sym.points):
        raise SpecError("spec has no 'latents' (a list of points z0 at which x = f(z0) is evaluated)")
    if chunk is None:
        chunk = default_chunk(sym)
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    import torch

    dev = resolve_device(device)
    t0 = time.perf_counter()
    model = numeric_model(sym)
    log_norm = sum(log_normalizers(model))
    results: list[PointResult] = []
    count = 0
    total = len(sym.points)
    from tqdm import tqdm

    with tqdm(total=total, desc=f"evaluate {sym.name}", unit="point", file=sys.stderr, disable=not progress, leave=False) as bar:
        for i in range(0, total, chunk):
            arr = np.array(point_floats(sym.points, i, min(total, i + chunk)), dtype=np.float64)
            pts = list(torch.from_numpy(arr).to(dev).unbind(0))
            part = evaluate_points(model, pts, list(sym.gamma2), log_px_method=log_px_method,
                                   is_samples=is_samples, seed=seed, elbo_method=elbo_method, max_memory=max_memory,
                                   progress=progress and sym.d > 3)
            if predictions:
                attach_predictions(sym, part, log_normalizer=log_norm)
            for r in part:
                count += 1
                if on_result is not None:
                    on_result(r)
                if keep_results:
                    results.append(r)
            del part
            bar.update(len(pts))
    return Evaluation(sym, results, time.perf_counter() - t0, str(dev), count)


def attach_predictions(sym: SymbolicModel, results: list[PointResult], log_normalizer: float = 0.0) -> None:
    """Set ``prediction`` of each result to the ε-expansion at its z0 (c_IMA, a1, μ1, s1, s2,
    log p and ELBO* to O(ε); docs/theory.md C7–C11, C14, C16), computed in closed form by
    theory.expansions.expand_at_floats (the same numbers as ``expand_at(...).as_floats()``, at a
    cost polynomial in n and d).  Beyond its size limits the prediction is None and the result's
    ``prediction_skipped`` attribute holds the reason (written into the JSON row by :func:`result_row`).

    ``log_normalizer`` is the numerically computed log normalizer of user-given prior
    log-densities (0 for the closed-form priors), so that the predicted log p and ELBO*
    constants refer to the normalized prior, as the numerics do.  The points are the spec's
    (checked when it was loaded); each is the exact rational of its float, as in the spec."""
    cache: dict[tuple[float, ...], dict[str, Any] | str] = {}
    for r in results:
        key = tuple(r.latent)
        if key not in cache:
            cache[key] = prediction_at(sym, key, log_normalizer)
        set_prediction(r, cache[key])


def prediction_at(sym: SymbolicModel, latent: Sequence[float], log_normalizer: float = 0.0) -> dict[str, Any] | str:
    """The prediction of :func:`attach_predictions` at one latent point (floats, each taken as
    the exact rational of its float): the expansion's dict, or the reason it was skipped."""
    from theory.expansions import PredictionSkipped, expand_at_floats
    from theory.spec import exact_number

    try:
        return expand_at_floats(sym, tuple(exact_number(v) for v in latent), log_normalizer=log_normalizer, checked=True)
    except PredictionSkipped as exc:
        return str(exc)


def set_prediction(r: PointResult, hit: dict[str, Any] | str) -> None:
    """Give ``r`` a :func:`prediction_at` answer: the prediction, or None and the skip reason."""
    if isinstance(hit, str):
        r.prediction = None
        r.prediction_skipped = hit  # type: ignore[attr-defined]  # read by result_row
    else:
        r.prediction = hit
