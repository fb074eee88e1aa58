"""Shared test settings and fixtures.

- One torch intra-op thread for the whole run, as the CLI and the Python API use by default:
  the work is many tiny batched linear-algebra calls, where a second thread only adds
  synchronization (docs/performance.md).
- Hypothesis runs derandomized (seeded from the test), with no example database written into
  the working tree.
- ``builtin`` / ``builtin_numeric``: the parsed built-in model specs, shared across tests.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test module starts (and ends) at one intra-op thread, whatever a test before it
    set: with two threads on 2 cores, tiny batched LAPACK calls (cholesky/eigh) contend with
    torch's OpenMP pool and take ~10 ms instead of ~3 µs (measured; docs/performance.md)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


settings.register_profile("gapcheck", derandomize=True, database=None, deadline=None)
settings.load_profile("gapcheck")


@pytest.fixture(scope="session")
def builtin():
    """``builtin(name)``: the parsed built-in spec proofs_check/models/NAME.toml (cached)."""
    from proofs_check.context import builtin_spec

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = builtin_spec(name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def builtin_numeric(builtin):
    """``builtin_numeric(name)``: the numeric model of a built-in spec (cached)."""
    from proofs_check.bridge import numeric_model

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = numeric_model(builtin(name))
        return cache[name]

    return get
