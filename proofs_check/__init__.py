"""gapcheck's proofs_check: joins theory/ (sympy) and numerics/ (torch): model specs, the
sympy->torch bridge, the claims registry, the `gapcheck` CLI, reports and plots, and the
public Python API (docs/api.md):

    import proofs_check as pc
    ev = pc.evaluate("examples/triangular.toml")
    print(ev.to_dict())

The API names are imported on first use, so ``gapcheck --help`` does not pay for torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_spec", "evaluate", "derive", "verify", "claims", "experiment", "certify", "Evaluation", "Derivation", "VerifyReport"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'proofs_check' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
