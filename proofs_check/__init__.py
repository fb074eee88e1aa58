"""gapcheck.proofs_check: joins theory/ and numerics/: model specs, the sympy->torch bridge,
the claims registry, the `gapcheck` CLI, reports and plots."""
