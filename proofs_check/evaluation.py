"""`gapcheck evaluate`: log p_γ(x), ELBO*(x), the gap and c_IMA for a user's model spec.

The numerics are :func:`numerics.sweep.evaluate_points`; this module joins them with the
spec (theory.spec) and the symbolic predictions (theory.expansions) and returns an
:class:`Evaluation` (``to_dict()`` for JSON, ``columns()`` for a table of numpy arrays).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from numerics.models import resolve_device
from numerics.sweep import PointResult, evaluate_points
from theory.spec import SpecError, SymbolicModel

from .bridge import log_normalizers, numeric_model, point_tensor

__all__ = ["Evaluation", "evaluate_spec", "attach_predictions"]


@dataclass
class Evaluation:
    """The result of evaluating one spec: one :class:`numerics.sweep.PointResult` per
    (latent point, γ²), points outer."""

    model: SymbolicModel
    results: list[PointResult]
    seconds: float
    device: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of `gapcheck evaluate --json` (docs/json.md)."""
        m = self.model
        return {
            "model": {"name": m.name, "d": m.d, "n": m.n, "decoder": [str(c) for c in m.decoder], "prior": m.prior_label},
            "device": self.device,
            "seconds": self.seconds,
            "results": [r.to_dict() for r in self.results],
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


#: Latent points evaluated together (all their γ² at once): bounds memory for specs with many points.
POINT_CHUNK = 32


def evaluate_spec(sym: SymbolicModel, device: str = "auto", predictions: bool = True, log_px_method: str = "auto",
                  is_samples: int = 65536, seed: int = 0, progress: bool = False,
                  on_result: Callable[[PointResult], None] | None = None, chunk: int = POINT_CHUNK,
                  elbo_method: str = "auto", max_memory: int | None = None) -> Evaluation:
    """Run `gapcheck evaluate` on a parsed spec; raises SpecError/ModelError on bad input.

    The latent points are evaluated ``chunk`` at a time (every γ² of a point in one batch), so
    memory does not grow with the number of points; ``on_result`` is called with each result as
    soon as its chunk is done (streaming, e.g. JSON Lines), and ``progress`` shows a tqdm bar
    over the points on stderr.  ``log_px_method``, ``elbo_method`` and ``max_memory`` (bytes; None:
    numerics.quadrature.DEFAULT_MAX_MEMORY) choose the estimators and their memory budget
    (:func:`numerics.sweep.evaluate_points`)."""
    if not sym.gamma2:
        raise SpecError("spec has no 'gamma2' (a list of decoder precisions γ² > 0)")
    if not sym.points:
        raise SpecError("spec has no 'latents' (a list of points z0 at which x = f(z0) is evaluated)")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    model = numeric_model(sym)
    pts = [point_tensor(p, dev) for p in sym.points]
    log_norm = sum(log_normalizers(model))
    results: list[PointResult] = []
    from tqdm import tqdm

    with tqdm(total=len(pts), desc=f"evaluate {sym.name}", unit="point", file=sys.stderr, disable=not progress, leave=False) as bar:
        for i in range(0, len(pts), chunk):
            part = evaluate_points(model, pts[i:i + chunk], list(sym.gamma2), log_px_method=log_px_method,
                                   is_samples=is_samples, seed=seed, elbo_method=elbo_method, max_memory=max_memory,
                                   progress=progress and sym.d > 3)
            if predictions:
                attach_predictions(sym, part, log_normalizer=log_norm)
            for r in part:
                if on_result is not None:
                    on_result(r)
            results += part
            bar.update(len(pts[i:i + chunk]))
    return Evaluation(sym, results, time.perf_counter() - t0, str(dev))


def attach_predictions(sym: SymbolicModel, results: list[PointResult], log_normalizer: float = 0.0) -> None:
    """Set ``prediction`` of each result to the symbolic expansion at its z0
    (theory.expansions.expand_at: c_IMA, a1, μ1, s1, s2, log p and ELBO* to O(ε)).

    ``log_normalizer`` is the numerically computed log normalizer of user-given prior
    log-densities (0 for the closed-form priors), so that the predicted log p and ELBO*
    constants refer to the normalized prior, as the numerics do."""
    from theory.expansions import expand_at

    cache: dict[tuple, dict[str, Any]] = {}
    keys = [tuple(float(v) for v in p) for p in sym.points]
    for r in results:
        key = tuple(r.latent)
        if key not in cache:
            i = keys.index(key)
            cache[key] = expand_at(sym, sym.points[i], log_normalizer=log_normalizer).as_floats()
        r.prediction = cache[key]
