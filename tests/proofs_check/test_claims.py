"""The docs/theory.md claims under pytest (`pytest -m claims`): each claim passes and each of its
planted faults is rejected, in --quick mode.  A project's CI can gate on these."""

from __future__ import annotations

import pytest

from proofs_check.checks import all_claims
from proofs_check.context import Context
from proofs_check.verification import run_claim

CLAIMS = {c.id: c for c in all_claims()}


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context(mode="quick", seed=0, device="cpu")


@pytest.mark.claims
@pytest.mark.parametrize("cid", [c for c in CLAIMS if c not in ("C17", "V1")])  # C17, V1: test_c17.py, test_certify.py
def test_claim(cid: str, ctx: Context) -> None:
    entry = run_claim(CLAIMS[cid], ctx)
    bad = [f"{c['name']}: error {c['error']} > tolerance {c['tolerance']} ({c['details']})" for c in entry["checks"] if not c["passed"]]
    assert entry["status"] == "passed", entry.get("error") or "\n".join(bad)
    assert len(entry["evidence"]) >= 2, f"{cid} has only {entry['evidence']} evidence"
    accepted = [c["fault"] for c in entry["negative_controls"] if not c["rejected"]]
    assert not accepted, f"planted faults accepted by {cid}: {accepted} ({entry['negative_controls']})"


def test_registry_is_complete() -> None:
    assert set(CLAIMS) == {f"C{i}" for i in range(1, 18)} | {"N1", "N2", "V1"}
    from proofs_check.checks.faults import FAULTS

    for c in CLAIMS.values():
        assert c.faults, f"{c.id} has no planted fault"
        assert set(c.faults) <= set(FAULTS), f"{c.id}: planted faults not documented in checks/faults.py FAULTS"
        assert c.statement and c.paper and c.latex
