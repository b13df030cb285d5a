"""The student adapter (Algorithm 1 of the ExFM paper): corrects a stale FM on the freshest labels.

``adapter(l) = l + sigma * (da * z + b + r(z))`` with ``z = (l - mu) / sigma`` the standardised FM
logit. ``mu``/``sigma`` are re-anchored on every window's FM logits (inputs only, no labels), so
the adapter follows the FM's logit scale across versions and windows. ``da``, ``b`` and the
residual MLP ``r`` start at zero (the adapter starts as the identity) and have their own AdamW
optimizer whose decoupled weight decay pulls them back to zero: the adapter is regularised toward
the identity and cannot overshoot far from the FM.

:class:`AdapterTrainer` runs the paper's order on each batch: first one step of the adapter on the
batch's labels, then its stop-gradient output becomes the VM's extra distillation target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from exfm_trainer.jobs import Distillation
from exfm_trainer.models.losses import bce

SIGMA_MIN = 1e-3


class StudentAdapter(nn.Module):
    """A Platt-style affine correction plus a small residual MLP on the standardised FM logit."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.slope = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1))
        self.residual = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.residual[2].weight)
        nn.init.zeros_(self.residual[2].bias)
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("sigma", torch.ones(()))

    @torch.no_grad()
    def anchor(self, mean: float, std: float) -> None:
        """Standardise FM logits by this mean and std from now on."""
        self.mu.fill_(float(mean))
        self.sigma.fill_(max(float(std), SIGMA_MIN))

    def forward(self, fm_logit: torch.Tensor) -> torch.Tensor:
        z = ((fm_logit - self.mu) / self.sigma).unsqueeze(-1)
        correction = self.slope * z + self.bias + self.residual(z)
        return fm_logit + self.sigma * correction.squeeze(-1)


class AdapterTrainer:
    """The adapter, its own optimizer, and the update-then-target step of Algorithm 1.

    ``all_reduce`` (optional) averages gradients over ranks in a multi-process job.
    """

    def __init__(
        self,
        cfg: Distillation,
        device: torch.device | str = "cpu",
        all_reduce: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.module = StudentAdapter(cfg.adapter_hidden).to(torch.device(device))
        self.optim = torch.optim.AdamW(
            self.module.parameters(), lr=cfg.adapter_lr, weight_decay=cfg.adapter_decay
        )
        self.all_reduce = all_reduce

    def anchor(self, mean: float, std: float) -> None:
        self.module.anchor(mean, std)

    def step(
        self, fm_logit: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Update the adapter on ``labels``, then return its stop-gradient probabilities.

        A zero ``weight`` (a padding copy) contributes no gradient; the caller runs no step that no
        rank holds rows for, so a step here always moves the adapter on real rows.
        """
        self.module.train()
        loss = bce(self.module(fm_logit), labels, weight)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        if self.all_reduce is not None:
            for p in self.module.parameters():
                if p.grad is not None:
                    self.all_reduce(p.grad)
        self.optim.step()
        return self.target(fm_logit)

    @torch.no_grad()
    def target(self, fm_logit: torch.Tensor) -> torch.Tensor:
        """The adapter's probability for each row (no gradient)."""
        return torch.sigmoid(self.module(fm_logit))

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "optim": self.optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optim.load_state_dict(state["optim"])
