"""gapcheck.theory: symbolic (sympy-only) models, derivations, closed forms and expansions.

Never imports torch or numerics/.  Results are sympy expressions (printable as LaTeX,
lambdifiable to numpy or mpmath).
"""
