"""Trainable amortized VAEs, many runs trained as one batched model (docs/experiments.md).

Model (docs/theory.md notation).  Prior p0(z) = Π_k p_k(z_k) (any :class:`numerics.models.Prior`),
likelihood p_γ(x|z) = N(x; f(z), γ⁻² I_n), encoder q(z|x) = N(μ(x), diag s(x)) with
(μ(x), log s(x)) the output of an MLP of x.  The decoder f is either *fixed* (any
:class:`numerics.models.Decoder`, e.g. the true mixing from a spec) or a *learned* MLP.

Training objective: the ELBO of docs/theory.md,

    ELBO(x; μ, s) = E_q[log p_γ(x|z)] + E_q[ℓ(z)] + ½ Σ_k log(2πe s_k),
    log p_γ(x|z) = n/2 · log(γ²/2π) − γ²/2 ‖x − f(z)‖²,

estimated per data point by one reparameterized sample z = μ + √s ⊙ ξ, ξ ~ N(0, I_d)
(:func:`elbo_reparam`, unbiased for every (μ, s)); the entropy term is exact.

Batching.  A *run* is one (γ², seed[, data set]) combination.  R runs are stacked along a
leading dimension of every parameter (weights of shape (R, out, in)) and evaluated with
batched matmuls (``torch.baddbmm``), so the runs of a γ² × seed grid train as one model.
The loss is Σ_r (mean over the minibatch of −ELBO_r): its gradient with respect to run r's
parameters is that run's own gradient, and Adam acts elementwise, so the runs do not
interact.  Every random number of run r (initial weights, minibatch indices, ξ) comes from
generators seeded by (seed_r, purpose, chunk) only: training a seed alone or together with
others gives the same parameters (tests/numerics/test_vae.py), and runs that share a seed
share their initialization and their minibatch/noise stream across γ² (common random numbers).

Optimizer: Adam (β1 = 0.9, β2 = 0.999, ε_Adam = 1e-8, bias-corrected) with a cosine learning
rate schedule lr_t = lr_end + (lr − lr_end)·(1 + cos(π t / T))/2 over the T training steps.
Networks: tanh MLPs (smooth, so the learned decoder has the C³ Jacobians the theory and the
exact quadrature need), Xavier-normal weights, zero biases.  float64 throughout.  Fixed
standardization with each run's training-data mean m and per-coordinate standard deviation σ_x:
the encoder sees (x − m)/σ_x, and a learned decoder is f(z) = m + σ_x ⊙ MLP(z) (both are
constants, not trained; they only condition the optimization).

Checkpoints: every ``chunk`` steps the state (parameters, Adam moments, step, loss history) is
written with ``torch.save`` as a dict of plain tensors, ints and strings, and read back with
``torch.load(weights_only=True)``; the random numbers of a chunk depend only on (seed, chunk),
so a resumed run continues bit for bit as if never interrupted.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .models import DTYPE, Decoder, Model, ModelError, Prior

Tensor = torch.Tensor
Layers = list[tuple[Tensor, Tensor]]

LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------------------
# Configuration and seeding
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    """Architecture and training budget of a batch of runs.

    ``learned_decoder``: train an MLP decoder (else the decoder is fixed and only the
    encoder is trained).  ``chunk``: steps between checkpoints; the random numbers are drawn
    chunk by chunk."""

    d: int
    n: int
    enc_hidden: tuple[int, ...] = (32, 32)
    dec_hidden: tuple[int, ...] = (32, 32)
    learned_decoder: bool = False
    steps: int = 2000
    batch: int = 128
    lr: float = 3e-3
    lr_end: float = 1e-4
    chunk: int = 250

    def __post_init__(self) -> None:
        if self.d < 1 or self.n < self.d:
            raise ModelError(f"VAE: need n >= d >= 1, got d = {self.d}, n = {self.n}")
        if self.steps < 1 or self.batch < 1 or self.chunk < 1:
            raise ModelError("VAE: steps, batch and chunk must be positive")
        if not (self.lr > 0 and self.lr_end > 0):
            raise ModelError("VAE: learning rates must be > 0")

    def fingerprint(self) -> str:
        return repr(self)


def _seed_int(*parts: int) -> int:
    """A 63-bit generator seed determined by the integers ``parts`` (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


_TAG_INIT, _TAG_BATCH = 1, 2
#: Version of the training code in checkpoint fingerprints: a checkpoint of another version is not resumed.
STATE_VERSION = 2


def lr_at(cfg: VAEConfig, step: int) -> float:
    """The cosine schedule lr_end + (lr − lr_end)·(1 + cos(π·step/steps))/2."""
    return cfg.lr_end + (cfg.lr - cfg.lr_end) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))


# ----------------------------------------------------------------------------------------
# Batched MLPs
# ----------------------------------------------------------------------------------------


def init_mlp(sizes: Sequence[int], seeds: Sequence[int], tag: int, device: torch.device) -> Layers:
    """Xavier-normal weights (std √(2/(fan_in + fan_out))), zero biases, for every run: weights
    (R, out, in), biases (R, out); run r drawn from a generator seeded by (seeds[r], tag)."""
    layers: Layers = []
    gens = [torch.Generator().manual_seed(_seed_int(s, _TAG_INIT, tag)) for s in seeds]
    for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
        std = math.sqrt(2.0 / (fi + fo))
        W = torch.stack([torch.randn(fo, fi, generator=g, dtype=DTYPE) * std for g in gens]).to(device)
        b = torch.zeros(len(seeds), fo, dtype=DTYPE, device=device)
        layers.append((W, b))
    return layers


def mlp_apply(layers: Layers, h: Tensor) -> Tensor:
    """Batched tanh MLP: h (R, B, in) -> (R, B, out); tanh after every layer but the last."""
    for i, (W, b) in enumerate(layers):
        h = torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))
        if i < len(layers) - 1:
            h = torch.tanh(h)
    return h


class LearnedDecoder(Decoder):
    """One run's learned MLP decoder as an ordinary :class:`Decoder` (shape (..., d) -> (..., n),
    torch operations only, so ``numerics.jacobian`` and the exact ELBO* apply to it)."""

    def __init__(self, layers: Sequence[tuple[Tensor, Tensor]], shift: Tensor, scale: Tensor, name: str = "learned") -> None:
        self.layers = [(W.detach().clone(), b.detach().clone()) for W, b in layers]
        self.shift, self.scale = shift.detach().clone(), scale.detach().clone()
        self.d = int(self.layers[0][0].shape[1])
        self.n = int(self.layers[-1][0].shape[0])
        self.name = name

    def __call__(self, z: Tensor) -> Tensor:
        self._check(z)
        h = z
        for i, (W, b) in enumerate(self.layers):
            W, b = W.to(device=z.device, dtype=z.dtype), b.to(device=z.device, dtype=z.dtype)
            h = h @ W.T + b
            if i < len(self.layers) - 1:
                h = torch.tanh(h)
        return self.shift.to(h) + self.scale.to(h) * h


# ----------------------------------------------------------------------------------------
# The ELBO estimator used for training
# ----------------------------------------------------------------------------------------


def elbo_reparam(decode: Callable[[Tensor], Tensor], prior: Prior, x: Tensor, gamma2: Tensor, mu: Tensor,
                 log_s: Tensor, xi: Tensor) -> Tensor:
    """One-sample reparameterized ELBO (module doc): with z = μ + exp(log s / 2) ⊙ ξ,

        n/2 · log(γ²/2π) − γ²/2 ‖x − f(z)‖² + ℓ(z) + ½ Σ_k log(2πe s_k).

    Shapes: x (..., n), μ, log s, ξ (..., d), γ² broadcastable to x.shape[:-1].  Unbiased for
    ELBO(x; μ, s) when ξ ~ N(0, I); averaging over several ξ gives the Monte Carlo ELBO."""
    n, d = x.shape[-1], mu.shape[-1]
    z = mu + torch.exp(0.5 * log_s) * xi
    r = x - decode(z)
    fit = 0.5 * n * torch.log(gamma2 / (2 * math.pi)) - 0.5 * gamma2 * (r * r).sum(-1)
    ent = 0.5 * (log_s.sum(-1) + d * (LOG_2PI + 1.0))
    return fit + prior.log_prob(z) + ent


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------


def _flatten(enc: Layers, dec: Layers | None) -> list[Tensor]:
    out = [t for layer in enc for t in layer]
    if dec is not None:
        out += [t for layer in dec for t in layer]
    return out


def _unflatten(flat: Sequence[Tensor], n_enc: int, n_dec: int) -> tuple[Layers, Layers | None]:
    enc = [(flat[2 * i], flat[2 * i + 1]) for i in range(n_enc)]
    dec = [(flat[2 * (n_enc + i)], flat[2 * (n_enc + i) + 1]) for i in range(n_dec)] if n_dec else None
    return enc, dec


def data_fingerprint(data: Tensor) -> str:
    """SHA-256 of the training data's float64 bytes (a checkpoint is reused only for the same data)."""
    return hashlib.sha256(data.detach().to("cpu", DTYPE).contiguous().numpy().tobytes()).hexdigest()[:24]


@dataclass
class TrainedVAE:
    """R trained runs: run r has precision ``gamma2s[r]`` and seed ``seeds[r]``.

    ``loss_history`` (R, chunks): mean −ELBO per data point over each chunk of steps."""

    cfg: VAEConfig
    prior: Prior
    gamma2s: Tensor
    seeds: list[int]
    encoder: Layers
    decoder_layers: Layers | None
    fixed_decoder: Decoder | None
    loss_history: Tensor
    x_shift: Tensor  # (R, n) training-data mean per run
    x_scale: Tensor  # (R, n) training-data standard deviation per run
    seconds: float = 0.0
    resumed_from: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def runs(self) -> int:
        return len(self.seeds)

    def decode(self, z: Tensor) -> Tensor:
        """f_r(z_r) for z of shape (R, B, d)."""
        if self.decoder_layers is not None:
            return self.x_shift[:, None] + self.x_scale[:, None] * mlp_apply(self.decoder_layers, z)
        assert self.fixed_decoder is not None
        return self.fixed_decoder(z)

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder outputs (μ, s) for x of shape (R, M, n) or (M, n) (the same x for every run);
        returns tensors (R, M, d)."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.runs, -1, -1)
        x = x.to(self.encoder[0][0])
        out = mlp_apply(self.encoder, (x - self.x_shift[:, None]) / self.x_scale[:, None])
        d = self.cfg.d
        return out[..., :d], torch.exp(out[..., d:])

    def decoder(self, r: int) -> Decoder:
        """Run r's decoder as a :class:`Decoder` (the fixed one, or a :class:`LearnedDecoder`)."""
        if self.decoder_layers is None:
            assert self.fixed_decoder is not None
            return self.fixed_decoder
        return LearnedDecoder([(W[r], b[r]) for W, b in self.decoder_layers], self.x_shift[r], self.x_scale[r],
                              name=f"learned(γ²={float(self.gamma2s[r]):g}, seed={self.seeds[r]})")

    def model(self, r: int) -> Model:
        """Run r's generative model: its decoder with the prior it was trained with."""
        return Model(self.decoder(r), self.prior, name=self.decoder(r).name)


def train_vae(
    cfg: VAEConfig,
    prior: Prior,
    data: Tensor,
    gamma2s: Sequence[float],
    seeds: Sequence[int],
    decoder: Decoder | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> TrainedVAE:
    """Train R = len(seeds) runs as one batched model (module doc).

    ``data``: (N, n) shared by all runs, or (R, N, n) one data set per run.  ``decoder``: the
    fixed decoder (required unless ``cfg.learned_decoder``).  ``checkpoint``: file for the
    resumable state (written every ``cfg.chunk`` steps and at the end).  ``progress(k)`` is
    called with the number of steps just done.
    """
    import time

    device = torch.device(device)
    R = len(seeds)
    if len(gamma2s) != R:
        raise ModelError(f"train_vae: {len(gamma2s)} precisions for {R} seeds")
    if any(not (g > 0 and math.isfinite(g)) for g in gamma2s):
        raise ModelError("train_vae: every γ² must be finite and > 0")
    if prior.d != cfg.d:
        raise ModelError(f"train_vae: prior has d = {prior.d}, config d = {cfg.d}")
    if cfg.learned_decoder == (decoder is not None):
        raise ModelError("train_vae: give a fixed decoder exactly when cfg.learned_decoder is False")
    if decoder is not None and (decoder.d != cfg.d or decoder.n != cfg.n):
        raise ModelError(f"train_vae: decoder maps R^{decoder.d} -> R^{decoder.n}, config d = {cfg.d}, n = {cfg.n}")
    data = data.to(device=device, dtype=DTYPE)
    if data.dim() == 2:
        data = data.unsqueeze(0).expand(R, -1, -1)
    if data.dim() != 3 or data.shape[0] != R or data.shape[2] != cfg.n:
        raise ModelError(f"train_vae: data must have shape (N, {cfg.n}) or ({R}, N, {cfg.n}), got {tuple(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise ModelError("train_vae: the training data are not finite")
    N = data.shape[1]
    if N < 2:
        raise ModelError("train_vae: need at least 2 training points")
    shift = data.mean(1)
    scale = data.std(1).clamp_min(1e-12)
    seeds = [int(s) for s in seeds]
    g2 = torch.tensor([float(g) for g in gamma2s], dtype=DTYPE, device=device)

    enc = init_mlp([cfg.n, *cfg.enc_hidden, 2 * cfg.d], seeds, 0, device)
    dec = init_mlp([cfg.d, *cfg.dec_hidden, cfg.n], seeds, 1, device) if cfg.learned_decoder else None
    flat = _flatten(enc, dec)
    m = [torch.zeros_like(p) for p in flat]
    v = [torch.zeros_like(p) for p in flat]
    step = 0
    n_chunks = math.ceil(cfg.steps / cfg.chunk)
    hist = torch.full((R, n_chunks), float("nan"), dtype=DTYPE)
    fp = f"v{STATE_VERSION}|{cfg.fingerprint()}|{prior.name}|{getattr(decoder, 'name', 'learned')}|{[float(g) for g in gamma2s]}|{seeds}|{data_fingerprint(data)}"
    resumed = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state.get("fingerprint") == fp:
            flat = [t.to(device) for t in state["params"]]
            m = [t.to(device) for t in state["m"]]
            v = [t.to(device) for t in state["v"]]
            step = int(state["step"])
            hist = state["history"].to(DTYPE)
            resumed = step
    n_enc = len(enc)
    n_dec = len(dec) if dec is not None else 0
    t0 = time.perf_counter()
    b1, b2, eps_adam = 0.9, 0.999, 1e-8
    ar = torch.arange(R, device=device)[:, None]
    while step < cfg.steps:
        c = step // cfg.chunk
        c_steps = min(cfg.chunk, cfg.steps - c * cfg.chunk)
        gens = [torch.Generator().manual_seed(_seed_int(s, _TAG_BATCH, c)) for s in seeds]
        idx_all = torch.stack([torch.randint(N, (c_steps, cfg.batch), generator=g) for g in gens]).to(device)
        xi_all = torch.stack([torch.randn(c_steps, cfg.batch, cfg.d, generator=g, dtype=DTYPE) for g in gens]).to(device)
        start_in_chunk = step - c * cfg.chunk
        loss_sum = torch.zeros(R, dtype=DTYPE)
        for j in range(start_in_chunk, c_steps):
            params = [p.detach().requires_grad_(True) for p in flat]
            e_l, d_l = _unflatten(params, n_enc, n_dec)
            xb = data[ar, idx_all[:, j]]  # (R, B, n)
            out = mlp_apply(e_l, (xb - shift[:, None]) / scale[:, None])
            mu, log_s = out[..., : cfg.d], out[..., cfg.d :]
            decode = (lambda z: shift[:, None] + scale[:, None] * mlp_apply(d_l, z)) if d_l is not None else decoder
            elbo = elbo_reparam(decode, prior, xb, g2[:, None], mu, log_s, xi_all[:, j])
            per_run = -elbo.mean(1)
            grads = torch.autograd.grad(per_run.sum(), params)
            step += 1
            lr = lr_at(cfg, step - 1)
            with torch.no_grad():
                bc1, bc2 = 1 - b1**step, 1 - b2**step
                new = []
                for p, g, mm, vv in zip(params, grads, m, v):
                    mm.mul_(b1).add_(g, alpha=1 - b1)
                    vv.mul_(b2).addcmul_(g, g, value=1 - b2)
                    new.append(p.detach() - lr * (mm / bc1) / (torch.sqrt(vv / bc2) + eps_adam))
                flat = new
            loss_sum += per_run.detach().cpu()
            if progress is not None:
                progress(1)
        hist[:, c] = loss_sum / (c_steps - start_in_chunk)  # checkpoints fall on chunk ends: start_in_chunk is 0
        if not bool(torch.isfinite(torch.stack([p.sum() for p in flat])).all()):
            raise FloatingPointError(f"VAE training diverged (non-finite parameters) before step {step}")
        if checkpoint is not None:
            _save_state(Path(checkpoint), {"fingerprint": fp, "params": [p.cpu() for p in flat], "m": [t.cpu() for t in m],
                                           "v": [t.cpu() for t in v], "step": step, "history": hist})
    enc, dec = _unflatten([p.detach() for p in flat], n_enc, n_dec)
    return TrainedVAE(cfg, prior, g2, seeds, enc, dec, decoder, hist, shift, scale, time.perf_counter() - t0, resumed)


def _save_state(path: Path, state: dict) -> None:
    """torch.save of plain tensors/ints/strings to a temporary file, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
# Data from the paper's generating processes
# ----------------------------------------------------------------------------------------


def sample_data(model: Model, num: int, seed: int, gamma2: float | None = None, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """(z, x): z ~ p0 (num draws, generator seeded by ``seed``), x = f(z) (noiseless, the
    paper's training data) or x = f(z) + γ⁻¹ξ, ξ ~ N(0, I_n), when ``gamma2`` is given."""
    gen = torch.Generator().manual_seed(_seed_int(seed, 7))
    z = model.prior.sample(num, gen).to(device)
    x = model.decoder(z)
    if gamma2 is not None:
        xi = torch.randn(num, model.n, generator=gen, dtype=DTYPE).to(device)
        x = x + xi / math.sqrt(gamma2)
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"the mixing {model.decoder.name} is not finite at some sampled latent")
    return z, x


class LinearAfterDecoder(Decoder):
    """x = A f(z): a decoder f followed by a fixed linear map A (n × n), e.g. a Möbius
    transform followed by a shear of chosen c_IMA (the paper's Möbius ∘ linear mixings)."""

    def __init__(self, base: Decoder, A: np.ndarray, name: str | None = None) -> None:
        A = np.asarray(A, dtype=np.float64)
        if A.shape != (base.n, base.n):
            raise ModelError(f"linear map must be {base.n}×{base.n}, got {A.shape}")
        self.base, self.A = base, A
        self.d, self.n = base.d, base.n
        self.name = name or f"A∘{base.name}"
        self._A = torch.as_tensor(A, dtype=DTYPE)

    def __call__(self, z: Tensor) -> Tensor:
        self._check(z)
        return self.base(z) @ self._A.to(device=z.device, dtype=z.dtype).T


def shear_with_contrast(c: float, n: int = 2) -> np.ndarray:
    """An n × n map of determinant 1 with IMA contrast c: the identity with its second column
    replaced by (cos φ, sin φ, 0, …), sin φ = e^{−c}, all scaled by sin(φ)^{−1/n} so that
    det A = 1.  Its contrast Σ_k log‖A_k‖ − log|det A| = −log sin φ = c (c ≥ 0; scaling
    leaves the contrast unchanged, docs/theory.md C4)."""
    if not (c >= 0 and math.isfinite(c)):
        raise ModelError(f"the contrast of the linear map must be finite and >= 0, got {c}")
    s = math.exp(-c)
    co = math.sqrt(max(0.0, 1 - s * s))
    A = np.eye(n)
    A[0, 1], A[1, 1] = co, s
    return A / math.sqrt(s) ** (2 / n)
