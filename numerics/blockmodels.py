"""A d-dimensional test model whose exact log p, ELBO* and gap are known by construction.

The decoder is made of independent nonlinear 2-D blocks hidden behind a dense random rotation
of the outputs:

    f(z) = Q · (h_1(z_1, z_2), h_2(z_3, z_4), …, h_B(z_{d−1}, z_d)),   d = 2B,

with Q ∈ R^{n×d} a seeded random matrix with orthonormal columns (n = d: a dense orthogonal
matrix, so every output depends on every latent) and each block a composition of two nonlinear
shears (a smooth bijection of R², every block nonlinear, Jacobian columns not orthogonal):

    h_b(u, v) = (y1, v + β_b tanh(y1)),   y1 = u + α_b tanh(v).

For x = f(z0), ‖x − f(z)‖² = Σ_b ‖h_b(z0_b) − h_b(z_b)‖² (Q has orthonormal columns and x lies
in its range), so with a factorized prior the posterior factorizes over blocks and

    log p_γ(x) − (n−d)/2 · log(γ²/2π) = Σ_b log p_γ,b(x_b),   x_b = h_b(z0_b),

the mean-field q = N(μ, diag s) splits the same way, so ELBO* (reduced) = Σ_b ELBO*_b and the gap
= Σ_b gap_b: sums of 2-D values that the exact 2-D path (numerics.sweep.evaluate_points on each
block model) computes to ~1e-12.  c_IMA adds up too (the rotation leaves it unchanged, C4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .models import CallableDecoder, Decoder, GaussianPrior1D, Model, ModelError, Prior, Prior1D, _ParamCache

Tensor = torch.Tensor

__all__ = ["BlockModel", "block_model", "ShearBlocksDecoder"]


def _shear_block(u: Tensor, v: Tensor, alpha: Tensor | float, beta: Tensor | float) -> tuple[Tensor, Tensor]:
    y1 = u + alpha * torch.tanh(v)
    return y1, v + beta * torch.tanh(y1)


class ShearBlocksDecoder(Decoder):
    """f(z) = Q · (h_1(z_1, z_2), …, h_B(z_{d−1}, z_d)) (module doc)."""

    def __init__(self, alphas: np.ndarray, betas: np.ndarray, Q: np.ndarray, name: str = "shear_blocks") -> None:
        B = len(alphas)
        self.d = 2 * B
        self.n = int(Q.shape[0])
        if Q.shape != (self.n, self.d) or self.n < self.d:
            raise ModelError(f"{name}: Q must be n×d with n >= d = {self.d}, got {Q.shape}")
        self.alphas, self.betas, self.Q, self.name = np.asarray(alphas), np.asarray(betas), Q, name
        self._p = _ParamCache(a=self.alphas, b=self.betas, Q=Q)

    def __call__(self, z: Tensor) -> Tensor:
        self._check(z)
        p = self._p.get(z)
        u, v = z[..., 0::2], z[..., 1::2]
        y1, y2 = _shear_block(u, v, p["a"], p["b"])
        h = torch.stack([y1, y2], -1).flatten(-2)  # interleave back: (y1_1, y2_1, y1_2, y2_2, …)
        return h @ p["Q"].T


@dataclass
class BlockModel:
    """The full d-dimensional model, its 2-D block models, and how to split a latent point:
    ``split(z)`` maps z (..., d) to the list of block latents z_b (..., 2); the full model's
    x = f(z0) corresponds to the block observations x_b = f_b(z0_b)."""

    full: Model
    blocks: list[Model]
    split: Callable[[Tensor], list[Tensor]]


def block_model(d: int = 10, seed: int = 0, n: int | None = None, strength: float = 0.8,
                prior: Sequence[Prior1D] | Prior1D | None = None) -> BlockModel:
    """The block model of the module doc with B = d/2 blocks.

    α_b, β_b are seeded uniform in ±[0.5, 1]·``strength`` (never small: every block is clearly
    nonlinear); Q is the orthonormal factor of a seeded Gaussian n×d matrix (n = d by default:
    a dense rotation).  ``prior``: one factor for all coordinates or d factors (default standard
    Gaussian).  Returns a :class:`BlockModel`."""
    if d < 2 or d % 2:
        raise ModelError(f"block model: d must be even and >= 2, got {d}")
    n = d if n is None else n
    if n < d:
        raise ModelError(f"block model: need n >= d, got n = {n}, d = {d}")
    B = d // 2
    rng = np.random.default_rng(seed)
    sign = rng.choice([-1.0, 1.0], size=(2, B))
    alphas = sign[0] * rng.uniform(0.5, 1.0, size=B) * strength
    betas = sign[1] * rng.uniform(0.5, 1.0, size=B) * strength
    Q, R = np.linalg.qr(rng.normal(size=(n, d)))
    Q = Q * np.sign(np.diag(R))[None, :]
    if prior is None:
        factors: list[Prior1D] = [GaussianPrior1D()] * d
    elif isinstance(prior, Prior1D):
        factors = [prior] * d
    else:
        factors = list(prior)
        if len(factors) != d:
            raise ModelError(f"block model: need 1 or d = {d} prior factors, got {len(factors)}")
    full = Model(ShearBlocksDecoder(alphas, betas, Q), Prior(factors), name=f"shear_blocks_d{d}",
                 meta={"blocks": B, "seed": seed})
    blocks = []
    for b in range(B):
        a_b, b_b = float(alphas[b]), float(betas[b])

        def fb(z: Tensor, a_b: float = a_b, b_b: float = b_b) -> Tensor:
            y1, y2 = _shear_block(z[..., 0], z[..., 1], a_b, b_b)
            return torch.stack([y1, y2], -1)

        blocks.append(Model(CallableDecoder(fb, 2, 2, name=f"shear_block_{b}"), Prior(factors[2 * b : 2 * b + 2]),
                            name=f"shear_block_{b}"))

    def split(z: Tensor) -> list[Tensor]:
        if z.shape[-1] != d:
            raise ModelError(f"block model: expected latents of dimension {d}, got shape {tuple(z.shape)}")
        return [z[..., 2 * b : 2 * b + 2] for b in range(B)]

    return BlockModel(full, blocks, split)
