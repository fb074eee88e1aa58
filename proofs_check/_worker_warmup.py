"""Imported once by the forkserver of a local Dask cluster (`--workers N`, see
:func:`proofs_check.distributed.open_client`), before it forks the worker processes.

Importing this module imports the numeric stack (torch, sympy, scipy and gapcheck's own
modules) and evaluates one small built-in spec on the CPU, so that torch's lazily loaded
machinery (torch.func's transforms, the decompositions they load on first use) and the bridge's
compiled formulas exist before the fork: every worker starts warm, and the imports are paid
once for all N workers instead of once per worker (measured: ~1.2 s of imports and ~1 s of
first-call work per worker on the 2-core development machine, docs/performance.md).

Constraints, because the workers are forked from this process:

* CPU only, and never ``torch.cuda.is_available()``: a CUDA context (or the CUDA runtime's
  device query) made before a fork is unusable in the children.  Workers choose their device
  themselves, per task.
* One torch thread: no OpenMP thread pool exists before the fork (a pool inherited by a forked
  child can deadlock it).  Tasks set their own thread count (``runtime.torch_threads``).
* Nothing here may stop the forkserver: any failure only loses the warm start.
"""

from __future__ import annotations

#: A 2-D nonlinear decoder with a 3-D output and a logistic prior: the evaluation exercises
#: Newton on the posterior mode and on the mean-field ELBO*, the Gauss-Hermite sums, the batched
#: Jacobians and one symbolic prediction, i.e. every path a sweep's first spec would warm.
WARM_SPEC = """
name = "warm-up"
decoder = ["z1 + 0.1*tanh(z2)", "z2 + 0.1*z1*z2", "0.1*z1"]
prior = "logistic"
gamma2 = [100.0]
latents = [[0.1, -0.2]]
"""

WARMED = False


def _warm() -> bool:
    import torch

    torch.set_num_threads(1)
    from theory.spec import loads_spec

    from . import distributed  # noqa: F401 (the task functions the workers run)
    from .evaluation import evaluate_spec

    evaluate_spec(loads_spec(WARM_SPEC, name="warm-up"), device="cpu", predictions=True)
    return True


try:
    WARMED = _warm()
except Exception:  # noqa: BLE001 (a warm start is an optimization; the workers still work without it)
    WARMED = False
