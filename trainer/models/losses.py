"""Training losses: BCE for the FM; serving + distillation (+ adapter) losses for the VM."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from exfm_trainer.jobs import Distillation
from exfm_trainer.models.vm import VMOutput


def bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy on logits against (possibly soft) targets; ``weight`` masks rows."""
    if weight is None:
        return F.binary_cross_entropy_with_logits(logits, target)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


def distillation_target(fm_logit: torch.Tensor, alpha: float) -> torch.Tensor:
    """``clip(alpha * sigmoid(fm_logit), <= 1)``: the FM soft label."""
    return (alpha * torch.sigmoid(fm_logit)).clamp(max=1.0)


def vm_loss(
    out: VMOutput,
    labels: torch.Tensor,
    fm_logit: torch.Tensor | None,
    cfg: Distillation,
    weight: torch.Tensor | None = None,
    adapter_prob: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total VM loss and its parts (detached tensors; no host sync).

    - ``none``: ``BCE(y_s, y)``
    - ``kd``:   ``BCE(y_s, y) + w * BCE(y_s, t)``
    - ``aux``:  ``BCE(y_s, y) + w * BCE(y_aux, t)`` (backbone sees the aux gradient times beta)

    with ``t = clip(alpha * p_fm, <= 1)``. With the student adapter's stop-gradient probability
    ``adapter_prob``, ``t = (1 - s) * clip(alpha * p_fm) + s * clip(alpha * p_adapter)`` where
    ``s = adapter_share``: the total distillation weight stays ``w``.
    """
    serving = bce(out.serving, labels, weight)
    parts = {"serving": serving.detach()}
    total = serving
    if cfg.mode == "none":
        return total, parts
    if fm_logit is None:
        raise ValueError(
            f"distillation mode {cfg.mode!r} needs the FM logit column (fm_logit): train on a DAS output"
        )
    head = out.aux if cfg.mode == "aux" else out.serving
    if head is None:
        raise ValueError("mode 'aux' needs a model built with an aux head")
    target = distillation_target(fm_logit, cfg.alpha)
    if adapter_prob is not None:
        share = cfg.adapter_share
        target = (1.0 - share) * target + share * (cfg.alpha * adapter_prob).clamp(max=1.0)
    distill = bce(head, target, weight)
    parts["distill"] = distill.detach()
    return total + cfg.weight * distill, parts


def fm_loss(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """FM loss ``BCE(logits, labels)`` and its parts (detached; no host sync)."""
    loss = bce(logits, labels, weight)
    return loss, {"bce": loss.detach()}
