# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Regression baselines for quality prediction: Dice regressed on image-level uncertainty scores.

Robinson et al. (MICCAI 2018) and Jungo & Reyes (MICCAI 2019) regress the Dice of a segmentation from a few
image-level features; :class:`ScoreRegressor` does the same with ridge regression (closed form, numpy only) on the
standardised scores of :py:func:`monai_probseg.quality.score_vector`, optionally with their squares and pairwise
products (``degree=2``), one output per region, clipped to ``[0, 1]``. With a single score it is the calibrated
single-score baseline (mean entropy, sample agreement, ...). scikit-learn is not a dependency; a gradient-boosted
baseline is left out for that reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ScoreRegressor"]


class ScoreRegressor:
    """Ridge regression of per-region Dice on scalar scores.

    Args:
        columns: indices of the score columns used (``None``: all).
        degree: 1 (linear) or 2 (with squares and pairwise products of the standardised scores).
        alpha: ridge penalty on the (standardised) coefficients, not on the intercept.

    Example::

        reg = ScoreRegressor(degree=2).fit(train_scores, train_dice)  # (n, k), (n, R)
        predicted = reg.predict(test_scores)  # (m, R) in [0, 1]
    """

    def __init__(self, columns: Sequence[int] | None = None, degree: int = 1, alpha: float = 1.0) -> None:
        if degree not in (1, 2):
            raise ValueError(f"degree must be 1 or 2, got {degree!r}.")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}.")
        self.columns = None if columns is None else [int(c) for c in columns]
        self.degree = int(degree)
        self.alpha = float(alpha)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.coef: np.ndarray | None = None

    def _design(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"scores must have shape (num_cases, num_scores), got {x.shape}.")
        if self.columns is not None:
            x = x[:, self.columns]
        if self.mean is None or self.std is None:
            raise RuntimeError("ScoreRegressor is not fitted: call fit(scores, dice) first.")
        z = (x - self.mean) / self.std
        parts = [np.ones((z.shape[0], 1)), z]
        if self.degree == 2:
            i, j = np.triu_indices(z.shape[1])
            parts.append(z[:, i] * z[:, j])
        return np.concatenate(parts, axis=1)

    def fit(self, scores: np.ndarray, dice: np.ndarray) -> ScoreRegressor:
        """Fit on ``scores`` ``(n, k)`` and true Dice ``(n,)`` or ``(n, R)``; returns ``self``."""
        x = np.asarray(scores, dtype=np.float64)
        y = np.asarray(dice, dtype=np.float64)
        y = y[:, None] if y.ndim == 1 else y
        if x.ndim != 2 or y.shape[0] != x.shape[0]:
            raise ValueError(f"scores {x.shape} and dice {y.shape} must be (n, k) and (n,) or (n, R).")
        used = x if self.columns is None else x[:, self.columns]
        self.mean = used.mean(0)
        self.std = np.where(used.std(0) > 1e-12, used.std(0), 1.0)
        design = self._design(x)
        penalty = self.alpha * np.eye(design.shape[1])
        penalty[0, 0] = 0.0
        self.coef = np.linalg.solve(design.T @ design + penalty, design.T @ y)
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Predicted Dice ``(m, R)`` in ``[0, 1]`` for ``scores`` ``(m, k)``."""
        if self.coef is None:
            raise RuntimeError("ScoreRegressor is not fitted: call fit(scores, dice) first.")
        return np.clip(self._design(scores) @ self.coef, 0.0, 1.0)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able parameters (restore with :meth:`from_state_dict`)."""
        return {
            "columns": self.columns,
            "degree": self.degree,
            "alpha": self.alpha,
            "mean": None if self.mean is None else self.mean.tolist(),
            "std": None if self.std is None else self.std.tolist(),
            "coef": None if self.coef is None else self.coef.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ScoreRegressor:
        """The regressor saved by :meth:`state_dict`."""
        reg = cls(state.get("columns"), int(state.get("degree", 1)), float(state.get("alpha", 1.0)))
        for name in ("mean", "std", "coef"):
            if state.get(name) is not None:
                setattr(reg, name, np.asarray(state[name], dtype=np.float64))
        return reg
