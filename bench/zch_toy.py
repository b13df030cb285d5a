"""Toy check: does torchrec's managed-collision (ZCH) remapping beat hashing on a long-tailed id stream?

One categorical feature over a churning, Zipf(1.05) population of 200k live ids (50 new ids per
step, old ones fade out); per-id true effect ``b ~ N(0, 1)``, base logit -2. The model is one
scalar per table row plus a global bias, trained online with Adagrad (LR 0.1) on batches of 1000;
progressive NE (each batch scored before training on it) over the second half of 800 steps.

- ``hash``: ids hashed into R rows (collisions spread over every id);
- ``zch``: :class:`torchrec.modules.mc_modules.MCHManagedCollisionModule` with R slots, DistanceLFU
  eviction every 10 steps (resident ids get their own row; every other id shares one row);
- ``exact``: one row per id (upper bound; what a vocabulary gives a small column).

Run: ``python bench/zch_toy.py`` (about 4 CPU-minutes).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torchrec.modules.mc_modules import DistanceLFU_EvictionPolicy, MCHManagedCollisionModule
from torchrec.sparse.jagged_tensor import JaggedTensor

N_IDS, STEPS, BATCH, CHURN = 200_000, 800, 1000, 50


def stream(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (ids, labels) from the churning long-tailed population."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, 1, N_IDS + CHURN * STEPS)
    p = np.arange(1, N_IDS + 1) ** -1.05
    p /= p.sum()
    perm = rng.permutation(N_IDS)
    for t in range(STEPS):
        ids = perm[rng.choice(N_IDS, BATCH, p=p)] + CHURN * t
        y = rng.random(BATCH) < 1 / (1 + np.exp(2 - effect[ids]))
        yield torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(y.astype(np.float32))


def normalized_entropy(p: torch.Tensor, y: torch.Tensor) -> float:
    p = p.clamp(1e-6, 1 - 1e-6)
    logloss = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    b = y.mean().clamp(1e-6, 1 - 1e-6)
    return float(logloss / -(b * b.log() + (1 - b) * (1 - b).log()))


def run(kind: str, rows: int, seed: int) -> float:
    """Second-half progressive NE of one encoding."""
    total = N_IDS + CHURN * STEPS
    w = torch.zeros(total if kind == "exact" else rows, requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adagrad([w, bias], lr=0.1)
    mch = MCHManagedCollisionModule(
        zch_size=rows,
        device=torch.device("cpu"),
        eviction_policy=DistanceLFU_EvictionPolicy(),
        eviction_interval=10,
        input_hash_size=total,
    ).train()
    probs, labels = [], []
    for t, (ids, y) in enumerate(stream(seed)):
        if kind == "hash":
            rows_of = (ids * 0x9E3779B1 + 12345) % rows
        elif kind == "zch":
            jt = JaggedTensor(values=ids, lengths=torch.ones(len(ids), dtype=torch.int32))
            rows_of = mch({"f": jt})["f"].values()
        else:
            rows_of = ids
        logit = w[rows_of] + bias
        if t >= STEPS // 2:
            probs.append(torch.sigmoid(logit).detach())
            labels.append(y)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return normalized_entropy(torch.cat(probs), torch.cat(labels))


def main() -> None:
    for rows in (4096, 16384):
        for kind in ("hash", "zch", "exact"):
            nes = [round(run(kind, rows, seed), 4) for seed in (0, 1)]
            print(f"rows={rows:6d} {kind:5s} NE (second half), seeds 0/1: {nes}", flush=True)


if __name__ == "__main__":
    main()
