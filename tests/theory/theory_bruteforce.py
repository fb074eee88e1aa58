"""Independent brute-force numerics for the ε-expansions (test helper, not a test module).

Nothing here uses theory.expansions: log p_γ(x) is a 2-D (or 1-D) quadrature, ELBO* a root
of the exact ELBO gradient, and the ε-coefficients come from polynomial fits over a range of ε.

Float64 is enough because everything is done in *reduced, scaled* coordinates:
z = z0 + √ε·u, so the ε-independent divergent term (n−d)/2·log(2πε) never appears and the
integrands are O(1).  The only cancellation is f(z) − f(z0) with |z − z0| ≳ 1e-3·|u|,
which loses about 3 of 16 digits; the fitted quantities need ~1e-12 absolute accuracy.

* log_px_red(ε) = −(d/2) log 2π + log|L| + log ∫ exp(ℓ(z0 + √ε Lξ) − ‖f − x‖²/(2ε)) dξ
  by the trapezoidal rule on a box [−R, R]^d (spectrally accurate for smooth integrands
  decaying like a Gaussian; L = chol(M⁻¹) makes the integrand ≈ N(0, I)).
* ELBO_red(m, t; ε) = d/2 + ½Σ log t_k − E[‖f(z) − x‖²]/(2ε) + E[ℓ(z)],
  z = z0 + ε m + √(ε t) ⊙ ξ, ξ ~ N(0, I), by tensor Gauss–Hermite quadrature (exact for
  polynomial decoders and Gaussian priors); its stationary point is found with scipy's
  hybr root finder from the exact (reparametrized) gradient.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import sympy as sp
from numpy.polynomial.hermite_e import hermegauss
from scipy import optimize
from scipy.special import logsumexp

from theory.spec import SymbolicModel


@dataclass
class NumericModel:
    d: int
    n: int
    f: list
    jac: list  # jac[i][a]
    ell: object
    dell: list

    @staticmethod
    def from_symbolic(model: SymbolicModel) -> "NumericModel":
        z = model.latents
        f = [sp.lambdify(z, e, "numpy") for e in model.decoder]
        J = model.jacobian()
        jac = [[sp.lambdify(z, J[i, a], "numpy") for a in range(model.d)] for i in range(model.n)]
        ell = model.log_prior()
        return NumericModel(
            model.d,
            model.n,
            f,
            jac,
            sp.lambdify(z, ell, "numpy"),
            [sp.lambdify(z, sp.diff(ell, za), "numpy") for za in z],
        )

    def _ev(self, fn, Z):
        return np.broadcast_to(np.asarray(fn(*Z), dtype=float), Z[0].shape)

    def F(self, Z):
        return np.stack([self._ev(fi, Z) for fi in self.f])

    def Jac(self, Z):
        return np.stack([np.stack([self._ev(self.jac[i][a], Z) for a in range(self.d)]) for i in range(self.n)])


def jacobian_at(nm: NumericModel, z0: np.ndarray) -> np.ndarray:
    Z = [np.array([v]) for v in z0]
    return nm.Jac(Z)[:, :, 0]


def log_px_reduced(nm: NumericModel, z0: np.ndarray, eps: float, R: float = 13.0, step: float = 0.1) -> float:
    """log p_γ(x) − (n−d)/2 log(γ²/2π) at x = f(z0), by the trapezoidal rule in scaled coordinates."""
    J0 = jacobian_at(nm, z0)
    L = np.linalg.cholesky(np.linalg.inv(J0.T @ J0))
    grid = np.arange(-R, R + step / 2, step)
    Xi = np.meshgrid(*([grid] * nm.d), indexing="ij")
    xi = np.stack([g.ravel() for g in Xi])  # d x N
    Z = z0[:, None] + np.sqrt(eps) * (L @ xi)
    x = nm.F([np.array([v]) for v in z0])[:, 0]
    r = nm.F(list(Z)) - x[:, None]
    expo = nm._ev(nm.ell, list(Z)) - np.sum(r * r, axis=0) / (2 * eps)
    log_int = logsumexp(expo) + nm.d * np.log(step)
    return float(-nm.d / 2 * np.log(2 * np.pi) + np.log(abs(np.linalg.det(L))) + log_int)


class ElboQuadrature:
    """ELBO_red and its gradient for q = N(z0 + ε m, ε diag(t)) by tensor Gauss–Hermite."""

    def __init__(self, nm: NumericModel, z0: np.ndarray, nodes: int = 40):
        self.nm, self.z0 = nm, np.asarray(z0, float)
        xs, ws = hermegauss(nodes)
        ws = ws / np.sqrt(2 * np.pi)
        grids = list(itertools.product(range(nodes), repeat=nm.d))
        self.xi = np.array([[xs[k] for k in idx] for idx in grids]).T  # d x N
        self.w = np.array([np.prod([ws[k] for k in idx]) for idx in grids])
        self.x = nm.F([np.array([v]) for v in self.z0])[:, 0]

    def _points(self, m, t, eps):
        return self.z0[:, None] + eps * m[:, None] + np.sqrt(eps * t)[:, None] * self.xi

    def value(self, m, t, eps):
        Z = self._points(m, t, eps)
        r = self.nm.F(list(Z)) - self.x[:, None]
        EF = self.w @ (np.sum(r * r, axis=0) / (2 * eps))
        El = self.w @ self.nm._ev(self.nm.ell, list(Z))
        return self.nm.d / 2 + 0.5 * np.sum(np.log(t)) - EF + El

    def grad(self, m, t, eps):
        """(∂/∂m)/ε and ∂/∂t of ELBO_red: both O(1) near the optimum."""
        Z = self._points(m, t, eps)
        r = self.nm.F(list(Z)) - self.x[:, None]
        Jz = self.nm.Jac(list(Z))  # n x d x N
        rJ = np.einsum("iN,iaN->aN", r, Jz)  # d x N
        dl = np.stack([self.nm._ev(fn, list(Z)) for fn in self.nm.dell])
        gm = (-(rJ @ self.w) + eps * (dl @ self.w)) / eps
        gt = 0.5 / t - ((rJ * self.xi) @ self.w) / (2 * np.sqrt(eps * t)) + np.sqrt(eps) * ((dl * self.xi) @ self.w) / (2 * np.sqrt(t))
        return gm, gt

    def optimum(self, eps, m0=None, t0=None):
        d = self.nm.d
        J0 = jacobian_at(self.nm, self.z0)
        m0 = np.zeros(d) if m0 is None else m0
        t0 = 1 / np.sum(J0 * J0, axis=0) if t0 is None else t0

        def G(p):
            gm, gt = self.grad(p[:d], np.exp(p[d:]), eps)
            return np.concatenate([gm, gt * np.exp(p[d:])])

        sol = optimize.root(G, np.concatenate([m0, np.log(t0)]), method="hybr", options={"xtol": 1e-15})
        if not sol.success and np.max(np.abs(sol.fun)) > 1e-11:
            raise RuntimeError(f"ELBO optimum not found: {sol.message}, residual {sol.fun}")
        m, t = sol.x[:d], np.exp(sol.x[d:])
        return m, t, self.value(m, t, eps), float(np.max(np.abs(sol.fun)))


@dataclass
class BruteForce:
    eps: np.ndarray
    gap: np.ndarray
    log_px: np.ndarray
    elbo: np.ndarray
    m: np.ndarray  # (len(eps), d): (μ* − z0)/ε
    t: np.ndarray  # (len(eps), d): s*/ε
    residual: float


def brute_force(model: SymbolicModel, z0, eps_values, nodes: int = 40, R: float = 13.0, step: float = 0.1) -> BruteForce:
    nm = NumericModel.from_symbolic(model)
    z0 = np.array([float(v) for v in z0])
    q = ElboQuadrature(nm, z0, nodes)
    gaps, lps, els, ms, ts, res = [], [], [], [], [], 0.0
    m0 = t0 = None
    for eps in eps_values:
        lp = log_px_reduced(nm, z0, eps, R=R, step=step)
        m, t, el, r = q.optimum(eps, m0, t0)
        m0, t0 = m, t
        gaps.append(lp - el)
        lps.append(lp)
        els.append(el)
        ms.append(m)
        ts.append(t)
        res = max(res, r)
    return BruteForce(np.array(eps_values), np.array(gaps), np.array(lps), np.array(els), np.array(ms), np.array(ts), res)


def fit(eps: np.ndarray, y: np.ndarray, deg: int = 3) -> np.ndarray:
    """Least-squares polynomial coefficients [c0, c1, ...] of y(ε) (columns scaled for conditioning)."""
    scale = eps.max()
    V = np.vander(eps / scale, deg + 1, increasing=True)
    c, *_ = np.linalg.lstsq(V, y, rcond=None)
    return c / scale ** np.arange(deg + 1)


def full_cov_elbo_star(nm: NumericModel, z0: np.ndarray, eps: float, nodes: int = 30) -> float:
    """max over q = N(z0 + ε m, ε L Lᵀ) of ELBO_red (full covariance, C14), by BFGS.

    ELBO* is quadratic in the parameter error, so BFGS's ~1e-8 parameter accuracy gives
    ~1e-15 in ELBO*.
    """
    d = nm.d
    xs, ws = hermegauss(nodes)
    ws = ws / np.sqrt(2 * np.pi)
    grids = list(itertools.product(range(nodes), repeat=d))
    xi = np.array([[xs[k] for k in idx] for idx in grids]).T
    w = np.array([np.prod([ws[k] for k in idx]) for idx in grids])
    x = nm.F([np.array([v]) for v in z0])[:, 0]
    tril = np.tril_indices(d)
    J0 = jacobian_at(nm, z0)
    L0 = np.linalg.cholesky(np.linalg.inv(J0.T @ J0))

    def unpack(p):
        m = p[:d]
        L = np.zeros((d, d))
        L[tril] = p[d:]
        L[np.diag_indices(d)] = np.exp(L[np.diag_indices(d)])
        return m, L

    def neg(p):
        m, L = unpack(p)
        Z = z0[:, None] + eps * m[:, None] + np.sqrt(eps) * (L @ xi)
        r = nm.F(list(Z)) - x[:, None]
        val = d / 2 + np.sum(np.log(np.diag(L))) - w @ (np.sum(r * r, axis=0) / (2 * eps)) + w @ nm._ev(nm.ell, list(Z))
        return -val

    p0 = np.zeros(d + len(tril[0]))
    Lp = L0.copy()
    Lp[np.diag_indices(d)] = np.log(np.diag(L0))
    p0[d:] = Lp[tril]
    res = optimize.minimize(neg, p0, method="BFGS", options={"gtol": 1e-11, "maxiter": 10_000})
    res = optimize.minimize(neg, res.x, method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-16, "maxiter": 20_000})
    return -float(res.fun)
