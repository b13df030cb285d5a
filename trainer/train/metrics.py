"""Window metrics: normalized entropy, AUC, logloss, calibration (computed once per window)."""

from __future__ import annotations

import math

import numpy as np

from exfm_trainer.layout import WindowMetrics

_EPS = 1e-7


def logloss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities ``p`` (clipped away from 0 and 1) against ``y``."""
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def entropy(base_rate: float) -> float:
    """Logloss of always predicting the base rate (the NE denominator)."""
    q = min(max(base_rate, _EPS), 1 - _EPS)
    return -(q * math.log(q) + (1 - q) * math.log(1 - q))


def normalized_entropy(p: np.ndarray, y: np.ndarray) -> float | None:
    """``logloss / entropy(base rate)``; None when the window has one class only."""
    base = float(np.mean(y))
    if base <= 0.0 or base >= 1.0:
        return None
    return logloss(p, y) / entropy(base)


def auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum statistic (ties get average ranks); None with one class only."""
    pos = int(np.sum(y))
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(scores)]))
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    rank_sum = float(np.sum(ranks[y > 0.5]))
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def window_metrics(
    window: int,
    logits: np.ndarray,
    labels: np.ndarray,
    skipped_rows: int = 0,
    samples_per_s: float | None = None,
    **extra: object,
) -> WindowMetrics:
    """Metrics of one window's progressive-validation predictions (``logits`` before training)."""
    rows = len(labels)
    if rows == 0:
        return WindowMetrics(window=window, rows=0, skipped_rows=skipped_rows, **extra)  # type: ignore[arg-type]
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    y = labels.astype(np.float64)
    label_sum = float(np.sum(y))
    return WindowMetrics(
        window=window,
        rows=rows,
        ne=normalized_entropy(p, y),
        auc=auc(p, y),
        logloss=logloss(p, y),
        calibration=float(np.sum(p)) / label_sum if label_sum > 0 else None,
        base_rate=label_sum / rows,
        samples_per_s=samples_per_s,
        skipped_rows=skipped_rows,
        **extra,  # type: ignore[arg-type]
    )
