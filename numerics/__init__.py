"""gapcheck.numerics: numpy/scipy/torch estimators (never sympy).

Every estimator returns a value and an error estimate (:class:`numerics.estimate.Estimate`).
"""
