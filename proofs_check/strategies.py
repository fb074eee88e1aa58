"""hypothesis strategies for the property-based checks: random smooth triangular (non-IMA) and
IMA-class decoders (n ≥ d), priors and latent points, as numeric models."""

from __future__ import annotations

from hypothesis import strategies as st

from numerics.models import GaussianPrior1D, IMADecoder, LogisticPrior1D, MLPDecoder, Model, Prior, StudentTPrior1D


@st.composite
def priors(draw, d: int) -> Prior:
    """A factorized prior with one random family for all coordinates."""
    kind = draw(st.sampled_from(["gaussian", "logistic", "student_t"]))
    if kind == "gaussian":
        f = GaussianPrior1D(0.0, draw(st.floats(0.5, 2.0)))
    elif kind == "logistic":
        f = LogisticPrior1D(0.0, draw(st.floats(0.5, 1.5)))
    else:
        f = StudentTPrior1D(draw(st.floats(3.0, 10.0)))
    return Prior.iid(f, d)


@st.composite
def decoders(draw, kind: str, max_d: int = 2):
    """A random decoder of ``kind`` ("triangular": a seeded autoregressive tanh MLP with an
    identity skip, non-IMA; "ima": O·h(z) with orthonormal O (n ≥ d) and h elementwise)."""
    d = draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2**20))
    if kind == "triangular":
        return MLPDecoder(d, hidden=8, seed=seed, scale=draw(st.floats(0.3, 0.8)), triangular=True, name=f"triangular_mlp(seed={seed})")
    n = d + draw(st.integers(0, 1))
    return IMADecoder(d, n, seed=seed, name=f"ima(d={d}, n={n}, seed={seed})")


@st.composite
def models_and_points(draw, kind: str, max_d: int = 2):
    """(Model, latent point z0 as a list) with z0 drawn in [-1.5, 1.5]^d."""
    dec = draw(decoders(kind, max_d))
    prior = draw(priors(dec.d))
    z0 = draw(st.lists(st.floats(-1.5, 1.5), min_size=dec.d, max_size=dec.d))
    return Model(dec, prior, name=f"{dec.name}, {prior.name}"), z0
