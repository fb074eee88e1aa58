"""Batched, float64, second-order maximization of smooth objectives (autograd Hessians).

Used for the posterior mode (log p_γ) and for ELBO*(x) = sup_{μ,s} ELBO(x; μ, s).  Objectives
that are sums over the nodes of a quadrature rule are evaluated in memory-bounded chunks
(:class:`NodeSumObjective`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.func import grad, hessian, vmap
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

Tensor = torch.Tensor


class ConvergenceError(RuntimeError):
    """An optimizer did not converge; the message names the problem instance."""


@dataclass
class NewtonResult:
    x: Tensor  # (B, p) maximizers
    value: Tensor  # (B,)
    grad: Tensor  # (B, p)
    hess: Tensor  # (B, p, p)
    decrement: Tensor  # (B,) Newton decrement ½ gᵀ(−H)⁻¹g: the predicted remaining increase
    converged: Tensor  # (B,) bool
    iterations: int


class Objective:
    """A batched objective for :func:`newton_maximize`: one smooth function of x (p,) per item,
    with per-item arguments ``args`` (tensors with a leading batch dimension)."""

    def value(self, x: Tensor, args: tuple[Tensor, ...]) -> Tensor:  # pragma: no cover - interface
        """Values (B,) at x (B, p)."""
        raise NotImplementedError

    def derivatives(self, x: Tensor, args: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Gradients (B, p) and Hessians (B, p, p) at x (B, p)."""
        raise NotImplementedError


class VmapObjective(Objective):
    """``fun(x, *args)`` (one item) batched with torch.func: ``vmap(fun)``, ``vmap(grad(fun))`` and
    ``vmap(hessian(fun))`` (forward-over-reverse autograd Hessians)."""

    def __init__(self, fun: Callable[..., Tensor]) -> None:
        self.fun = fun
        self._value = vmap(fun)
        self._grad = vmap(grad(fun))
        self._hess = vmap(hessian(fun))

    def value(self, x: Tensor, args: tuple[Tensor, ...]) -> Tensor:
        return self._value(x, *args)

    def derivatives(self, x: Tensor, args: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return self._grad(x, *args), self._hess(x, *args)


def as_objective(fun: Callable[..., Tensor] | Objective) -> Objective:
    """``fun`` itself if it is an :class:`Objective`, else :class:`VmapObjective` (fun)."""
    return fun if isinstance(fun, Objective) else VmapObjective(fun)


def _index_args(args: tuple[Tensor, ...], idx: Tensor) -> tuple[Tensor, ...]:
    return tuple(a[idx] for a in args)


def _newton_step(g: Tensor, H: Tensor) -> tuple[Tensor, Tensor]:
    """Saddle-free Newton step |H|⁻¹ g and decrement ½ gᵀ|H|⁻¹ g (eigenvalues of −H by absolute
    value, floored at 1e-12·max)."""
    lam, V = torch.linalg.eigh(-H)
    lam_abs = lam.abs()
    floor = (lam_abs.amax(-1, keepdim=True) * 1e-12).clamp_min(1e-300)
    lam_c = torch.maximum(lam_abs, floor)
    gV = (V.transpose(-1, -2) @ g.unsqueeze(-1)).squeeze(-1)
    step = (V @ (gV / lam_c).unsqueeze(-1)).squeeze(-1)
    dec = 0.5 * (gV * gV / lam_c).sum(-1)
    return step, dec


def newton_maximize(
    fun: Callable[..., Tensor] | Objective,
    x0: Tensor,
    args: tuple[Tensor, ...] = (),
    max_iter: int = 100,
    tol: float = 1e-20,
    step_tol: float = 1e-15,
    value_noise: Tensor | None = None,
    start: tuple[Tensor, Tensor, Tensor] | None = None,
) -> NewtonResult:
    """Maximize ``fun(x, *args)`` (x of shape (p,), args per item) for a batch of items.

    ``fun`` is a one-item function (batched with torch.func, :class:`VmapObjective`) or an
    :class:`Objective` (e.g. a node sum evaluated in memory-bounded chunks).

    A saddle-free damped Newton method: the step solves |H| δ = g with the eigenvalues of
    −H replaced by their absolute values (floored at 1e-12·max), followed by a backtracking
    line search (Armijo; step lengths 1, ½, ¼, … 2⁻²⁹, each evaluated only for the items that
    have not yet accepted a shorter one; an item that accepts none takes the best of the 30).
    An item is converged when its Newton decrement ½ gᵀ|H|⁻¹ g is below ``tol`` or its step
    is below ``step_tol``·(1 + |x|).  Items that never converge are reported, not hidden
    (``converged`` is False).

    ``value_noise`` (per item, optional) is the floating-point noise of ``fun``'s value: a
    step whose predicted gain 2·decrement is below it is accepted without the line search
    (which cannot resolve it), and an item whose decrement is below 1e-3·value_noise is
    converged (the remaining gain is far below what the value can resolve).

    ``start``: (values, gradients, Hessians) at x0 when the caller already has them.
    """
    obj = as_objective(fun)
    x = x0.clone()
    B, p = x.shape
    alphas = [0.5**k for k in range(30)]
    A = len(alphas)
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    noise = torch.zeros(B, dtype=x.dtype, device=x.device) if value_noise is None else value_noise.to(x)
    if start is not None:
        val, g, H = start
    else:
        val = obj.value(x, args)
        g, H = obj.derivatives(x, args)
    it = 0
    for it in range(1, max_iter + 1):
        step, dec = _newton_step(g, H)
        small_step = step.abs().amax(-1) <= step_tol * (1 + x.abs().amax(-1))
        newly_done = (dec <= tol) | small_step | (dec <= 1e-3 * noise)
        done = done | newly_done
        if bool(done.all()):
            break
        # backtracking line search on the items still running
        tiny = ((2 * dec) <= 1e-13 * (1 + val.abs())) | ((2 * dec) <= noise)
        cvals = torch.full((B, A), -torch.inf, dtype=x.dtype, device=x.device)
        first = torch.full((B,), -1, dtype=torch.long, device=x.device)
        pending = ~done
        for j, alpha in enumerate(alphas):
            idx = pending.nonzero().flatten()
            if idx.numel() == 0:
                break
            cv = obj.value(x[idx] + alpha * step[idx], _index_args(args, idx))
            fin = torch.isfinite(cv)
            cv = torch.where(fin, cv, torch.full_like(cv, -torch.inf))
            cvals[idx, j] = cv
            ok = cv >= val[idx] + 1e-4 * alpha * (2 * dec[idx])
            if j == 0:  # when the predicted increase is below rounding, accept the full Newton step
                ok = ok | (tiny[idx] & fin)
            first[idx[ok]] = j
            pending[idx[ok]] = False
        first = torch.where(first >= 0, first, cvals.argmax(1))
        alpha_t = torch.tensor(alphas, dtype=x.dtype, device=x.device)[first]
        new_x = x + alpha_t.unsqueeze(-1) * step
        new_val = cvals[torch.arange(B), first]
        improve = (new_val >= val) | tiny
        upd = (~done) & improve & torch.isfinite(new_val)
        x = torch.where(upd.unsqueeze(-1), new_x, x)
        val = torch.where(upd, new_val, val)
        moved = upd.nonzero().flatten()
        if moved.numel():
            gm, Hm = obj.derivatives(x[moved], _index_args(args, moved))
            g, H = g.clone(), H.clone()
            g[moved], H[moved] = gm, Hm
    _, dec = _newton_step(g, H)
    converged = done | (dec <= tol) | (dec <= 1e-3 * noise)
    return NewtonResult(x, val, g, H, dec, converged, it)


# ----------------------------------------------------------------------------------------
# memory-bounded node sums
# ----------------------------------------------------------------------------------------


class _AllocationCounter(TorchDispatchMode):
    """Adds up the bytes of every tensor an op returns (views count zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t._is_view():
                self.bytes += t.numel() * t.element_size()
        return out


def allocation_bytes(run: Callable[[], Any]) -> int:
    """Bytes allocated by all the tensor operations of ``run()``, as if none were ever freed: an
    upper bound on the peak working memory of the call (its inputs excluded)."""
    counter = _AllocationCounter()
    with counter:
        run()
    return counter.bytes


def allocation_probe(run: Callable[[int], Any], size: int, probe: int = 64) -> tuple[float, float]:
    """(fixed, per_unit) bytes with ``allocation_bytes(run(n)) ≤ fixed + per_unit·n`` for a
    computation linear in n (a chunk of n nodes): measured at n = probe/2 and probe (or at
    ``size`` alone when it is smaller)."""
    if size <= probe:
        return 0.0, allocation_bytes(lambda: run(size)) / size
    n1, n2 = probe // 2, probe
    c1, c2 = allocation_bytes(lambda: run(n1)), allocation_bytes(lambda: run(n2))
    per = max((c2 - c1) / (n2 - n1), 0.0)
    return max(c1 - per * n1, 0.0), per


_MODEL_COSTS: dict[int, dict[Any, Any]] = {}


def model_costs(model: Any) -> dict[Any, Any]:
    """A cache of measured allocation costs (:func:`allocation_probe` results) that lives as long
    as ``model`` does: the bytes per node of an integrand depend only on the model and on the
    computation, so one probe per (model, computation) suffices for a whole sweep (also the
    sparse grids' saved-bytes-per-node probe, numerics.highdim)."""
    key = id(model)
    if key not in _MODEL_COSTS:
        _MODEL_COSTS[key] = {}
        weakref.finalize(model, _MODEL_COSTS.pop, key, None)
    return _MODEL_COSTS[key]


@dataclass
class ChunkPlan:
    """How a batch is cut: ``items`` per call and ``nodes`` per call (``whole``: the whole rule at
    once, through the unchunked objective)."""

    items: int
    nodes: int
    whole: bool
    bytes: float  # predicted bytes of one call


class NodeSumObjective(Objective):
    """An objective that is a sum over the nodes of a rule, evaluated within a byte budget:

        F(x; a) = G(x; a) + Σ_i h(x; a, u_i, W_i)      (a: per-item arguments, u_i, W_i: nodes, weights)

    - ``whole()`` returns the one-item function F with the whole rule built in (the unchunked
      objective, used as is when every item's whole rule fits: then the results are those of the
      plain :class:`VmapObjective`);
    - ``part(x, *a, nodes, logw)`` is Σ_i h over a chunk of nodes (log-weights ``logw``) and
      ``glob(x, *a)`` is G;
    - ``rule`` has ``size``, ``d`` and ``chunk(start, stop) -> (nodes, logw)``
      (:class:`numerics.quadrature.TensorRule`).

    Chunk sizes come from :func:`allocation_probe` run on one item (bytes per node for values and
    for gradients + Hessians), so that no call allocates more than ``max_memory`` bytes;
    :class:`numerics.quadrature.MemoryBudgetError` when not even one node fits.
    ``what`` names the computation in that message.
    ``costs``: a dict shared by objectives that differ only in their rule (the refinement levels),
    so the probe runs once.
    """

    def __init__(self, whole: Callable[[], Callable[..., Tensor]], part: Callable[..., Tensor],
                 glob: Callable[..., Tensor], rule: Any, max_memory: int, what: str = "the objective",
                 costs: dict[str, tuple[float, float]] | None = None) -> None:
        self._make_whole, self.part, self.glob, self.rule = whole, part, glob, rule
        self.max_memory = int(max_memory)
        self.what = what
        self._whole: VmapObjective | None = None
        self._plans: dict[str, tuple[float, float]] = {} if costs is None else costs
        self._rule_cache: tuple[Tensor, Tensor] | None = None
        self._fns: dict[tuple[str, int], Callable[..., Any]] = {}

    # -- planning ------------------------------------------------------------------------
    def _cost(self, kind: str, x: Tensor, args: tuple[Tensor, ...]) -> tuple[float, float]:
        if kind not in self._plans:
            x1, a1 = x[:1], tuple(a[:1] for a in args)

            def run(n: int) -> None:
                nodes, logw = self.rule.chunk(0, n)
                self._part_fn(kind, len(a1))(x1, *a1, nodes, logw)

            self._plans[kind] = allocation_probe(run, self.rule.size)
        return self._plans[kind]

    def plan(self, kind: str, x: Tensor, args: tuple[Tensor, ...]) -> ChunkPlan:
        """The chunking of a batch x (B, p) for ``kind`` ("value" or "derivatives")."""
        fixed, per = self._cost(kind, x, args)
        N, d, B = self.rule.size, self.rule.d, x.shape[0]
        node_bytes = per + 8.0 * (d + 1)  # + the nodes and weights themselves
        one_item = fixed + node_bytes * N
        M = self.max_memory
        if one_item <= M:
            items = max(1, min(B, int(M // one_item)))
            return ChunkPlan(items, N, True, items * one_item)
        nodes = int((M - fixed) // node_bytes)
        if nodes < 1:
            from .quadrature import MemoryBudgetError, format_bytes

            raise MemoryBudgetError(
                f"{self.what}: one item needs {format_bytes(fixed + node_bytes)} per call even with a single node, "
                f"more than the memory budget {format_bytes(M)} (raise --max-memory)")
        return ChunkPlan(1, min(nodes, N), False, fixed + node_bytes * min(nodes, N))

    def _part_fn(self, kind: str, n_args: int) -> Callable[..., Any]:
        """vmap of the node part (values, or gradients and Hessians) over items, not nodes."""
        key = (kind, n_args)
        if key not in self._fns:
            part = self.part

            def both(x: Tensor, *rest: Tensor) -> tuple[Tensor, Tensor]:
                return grad(part)(x, *rest), hessian(part)(x, *rest)

            self._fns[key] = vmap(part if kind == "value" else both, in_dims=(0,) * (1 + n_args) + (None, None))
        return self._fns[key]

    def _whole_obj(self) -> VmapObjective:
        if self._whole is None:
            self._whole = VmapObjective(self._make_whole())
        return self._whole

    def _chunk(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        # the rule is kept in memory when it is small next to the budget, else regenerated
        if self._rule_cache is None and self.rule.size * 8 * (self.rule.d + 1) <= self.max_memory // 8:
            self._rule_cache = self.rule.chunk(0, self.rule.size)
        if self._rule_cache is not None:
            return self._rule_cache[0][start:stop], self._rule_cache[1][start:stop]
        return self.rule.chunk(start, stop)

    # -- evaluation ----------------------------------------------------------------------
    def _run(self, kind: str, x: Tensor, args: tuple[Tensor, ...]) -> Any:
        B = x.shape[0]
        pl = self.plan(kind, x, args)
        outs = []
        for i in range(0, B, pl.items):
            xi, ai = x[i:i + pl.items], tuple(a[i:i + pl.items] for a in args)
            if pl.whole:
                w = self._whole_obj()
                outs.append(w.value(xi, ai) if kind == "value" else w.derivatives(xi, ai))
                continue
            glob = vmap(self.glob)
            if kind == "value":
                acc = glob(xi, *ai)
            else:
                acc = (vmap(grad(self.glob))(xi, *ai), vmap(hessian(self.glob))(xi, *ai))
            f = self._part_fn(kind, len(ai))
            for s in range(0, self.rule.size, pl.nodes):
                nodes, logw = self._chunk(s, s + pl.nodes)
                r = f(xi, *ai, nodes, logw)
                acc = acc + r if kind == "value" else (acc[0] + r[0], acc[1] + r[1])
            outs.append(acc)
        if kind == "value":
            return torch.cat(outs)
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def value(self, x: Tensor, args: tuple[Tensor, ...]) -> Tensor:
        return self._run("value", x, args)

    def derivatives(self, x: Tensor, args: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return self._run("derivatives", x, args)
