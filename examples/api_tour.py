"""A tour of gapcheck's Python API (docs/api.md).  Run it: ``python examples/api_tour.py``.

It loads a spec three ways, evaluates it, looks at one result with its error estimates,
turns the results into columns, derives the symbolic expansion and checks one claim.
"""

from __future__ import annotations

import math
from pathlib import Path

import proofs_check as pc

HERE = Path(__file__).resolve().parent

# 1. A spec from a file, from TOML text, or from a dict: all give the same symbolic model.
spec = pc.load_spec(HERE / "triangular.toml")
same = pc.load_spec({"decoder": ["z1 + 0.4*z2**2", "z2"], "prior": "logistic",
                     "gamma2": [1e2, 1e4], "latents": [[0.3, 1.1]]}, name="from_dict")
text = pc.load_spec('decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\ngamma2 = [1e4]\nlatents = [[0.3, 1.1]]\n')
print(f"{spec.name}: d = {spec.d}, n = {spec.n}, prior {spec.prior_label}, {len(spec.points)} points x {len(spec.gamma2)} gamma^2")

# 2. Evaluate: log p, ELBO*, the gap and c_IMA with error estimates, at every point and gamma^2.
ev = pc.evaluate(same)
r = ev.results[-1]
print(f"gamma^2 = {r.gamma2:g}: gap = {r.gap.value:.12f} +/- {r.gap.error:.1e} ({r.gap.error_kind}), c_IMA = {r.c_ima:.12f}")
print(f"  log p = {r.log_px.value:.12f} ({r.log_px.method}), ELBO* = {r.elbo_star.value:.12f}, mu* = {r.mu_star}, s* = {r.s_star}")
assert abs(r.gap.value - r.c_ima) < 1e-3  # the gap theorem at gamma^2 = 1e4: |a1| eps ~ 4e-5

# 3. JSON and columns (a dict of numpy arrays: pandas.DataFrame(cols) works if pandas is installed).
doc = ev.to_dict()
cols = ev.columns()
print(f"JSON rows: {len(doc['results'])}; columns: {', '.join(list(cols)[:8])}, ...")
assert len(cols["gap"]) == len(ev.results)

# 4. The symbolic side: gap = c_IMA + a1 eps + O(eps^2) at each point of the spec.
(d,) = pc.derive(text)
c_ima, a1 = d.coefficients["gap"]
print(f"derived at z0 = {d.point}: c_IMA = {c_ima:.12f}, a1 = {a1:.6f}")
print(d.text().splitlines()[0])
# the numeric gap at gamma^2 = 1e4 agrees with the two-term expansion to O(eps^2) = 1e-8
num = pc.evaluate(text, predictions=False).results[0]
assert math.isclose(num.gap.value, c_ima + a1 / 1e4, abs_tol=1e-7), (num.gap.value, c_ima + a1 / 1e4)

# 5. The claims: list them, and check one (quick mode) with its planted faults.
print(", ".join(c.id for c in pc.claims()))
rep = pc.verify(["C11"], mode="quick")
print(f"C11: {'passed' if rep.passed else 'FAILED'}; checks: {len(rep.columns()['check'])}")
assert rep.passed
