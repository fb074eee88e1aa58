"""Batched Jacobians of decoders and the IMA contrast (docs/theory.md: c_IMA, C_IMA).

c_IMA(f, z) = Σ_k log‖J_k(z)‖ − ½ log det(J(z)ᵀJ(z)).  With the thin QR factorization
J = QR, ½ log det(JᵀJ) = Σ_k log|R_kk| and |R_kk| ≤ ‖J_k‖, so

    c_IMA = Σ_k log(‖J_k‖ / |R_kk|),

a sum of non-negative terms computed without forming JᵀJ or any inverse; this is stable
for ill-conditioned J and for any n ≥ d.
"""

from __future__ import annotations

import math

import torch
from torch.func import jacfwd, jacrev, vmap

from .estimate import Estimate
from .models import Decoder, Model, ModelError

Tensor = torch.Tensor


def jacobian(f: Decoder, z: Tensor) -> Tensor:
    """J(z) = ∂f/∂z for a batch z of shape (..., d); returns (..., n, d)."""
    batch = z.shape[:-1]
    flat = z.reshape(-1, z.shape[-1])
    J = vmap(jacrev(f))(flat)
    return J.reshape(*batch, J.shape[-2], J.shape[-1])


def second_derivatives(f: Decoder, z: Tensor) -> Tensor:
    """T2(z)_{i,j,k} = ∂²f_i/∂z_j∂z_k for a batch z (..., d); returns (..., n, d, d)."""
    batch = z.shape[:-1]
    flat = z.reshape(-1, z.shape[-1])
    T = vmap(jacfwd(jacrev(f)))(flat)
    return T.reshape(*batch, *T.shape[-3:])


class SingularJacobianError(ModelError):
    """J(z) is (numerically) rank deficient: c_IMA and the theorems do not apply."""


def c_ima_from_jacobian(J: Tensor, rcond: float = 1e-12) -> Tensor:
    """Local IMA contrast from Jacobians J of shape (..., n, d), via QR (see module doc).

    Raises SingularJacobianError when min_k |R_kk| / max_k ‖J_k‖ < rcond for some matrix.
    """
    if J.shape[-2] < J.shape[-1]:
        raise ModelError(f"c_IMA needs n >= d, got a Jacobian of shape {tuple(J.shape[-2:])}")
    R = torch.linalg.qr(J, mode="r").R
    rdiag = torch.diagonal(R, dim1=-2, dim2=-1).abs()
    norms = torch.linalg.vector_norm(J, dim=-2)
    scale = norms.amax(-1, keepdim=True)
    if bool(((rdiag / scale) < rcond).any()) or not bool(torch.isfinite(J).all()):
        raise SingularJacobianError(
            "the Jacobian J(z) is singular (or not finite) at the point: the decoder is not locally "
            "injective there, so c_IMA and the theorems do not apply"
        )
    return (torch.log(norms) - torch.log(rdiag)).sum(-1)


def c_ima(f: Decoder, z: Tensor) -> Tensor:
    """c_IMA(f, z) for a batch of latents z (..., d)."""
    return c_ima_from_jacobian(jacobian(f, z))


def c_ima_batch_mean_jacobian(f: Decoder, z: Tensor) -> Tensor:
    """The *wrong* contrast used by the paper's code: c_IMA of the batch-mean Jacobian
    (a negative control, docs/theory.md N2).  Returns a scalar."""
    return c_ima_from_jacobian(jacobian(f, z).mean(0))


def global_c_ima(model: Model, num_samples: int = 4096, seed: int = 0, device: str | torch.device = "cpu") -> Estimate:
    """C_IMA(f, p0) = E_{z~p0} c_IMA(f, z) by plain Monte Carlo over the prior.

    Error: the standard error std/√N.  Samples where J is singular (measure zero for a
    locally injective decoder) raise SingularJacobianError.
    """
    gen = torch.Generator().manual_seed(seed)
    z = model.prior.sample(num_samples, gen, device=device)
    vals = c_ima_from_jacobian(jacobian(model.decoder, z))
    mean = float(vals.mean())
    se = float(vals.std(unbiased=True)) / math.sqrt(num_samples)
    return Estimate(mean, se, "monte_carlo", "standard_error", {"num_samples": num_samples, "seed": seed})
