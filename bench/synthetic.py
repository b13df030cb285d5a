"""Statistics of the synthetic stream (docs/data.md), and optionally the FM's NE by size on it.

``python bench/synthetic.py [--config '{"users": 3750}'] [--fm small,medium,large --out DIR] [--json OUT]``

Prints (and writes as JSON) generation time, CTR levels, traffic shares, user activity and ad
popularity tails, churn, day-over-day drift of the true CTR, the Bayes NE, and what part of the
Bayes gap each oracle closes, and what drift alone costs a perfect but stale model (and what a
logit-level adapter recovers of it). With ``--fm`` it trains those FM presets with the real ``fm-train``
job (the study's ``ensure_fm``) on the stream and reports their progressive NE/AUC over the second
half of the windows. The stream defaults to the ``quick`` study's shape (24 x 25k rows, 4 verticals).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from exfm_trainer.data.synthetic import SyntheticConfig, generate, normalized_entropy, window_truth
from exfm_trainer.data.synthetic_world import Rows, World, stream

QUICK = {"windows": 24, "rows_per_window": 25_000, "verticals": 4, "seed": 0}


def _tail_share(counts: np.ndarray, top: float) -> float:
    s = np.sort(counts[counts > 0])[::-1]
    return float(s[: max(1, int(len(s) * top))].sum() / s.sum())


def stream_stats(cfg: SyntheticConfig) -> dict[str, Any]:
    """Generation time and the stream's statistics (one pass over :func:`stream`)."""
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        generate(tmp, cfg)
        gen = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    truths, users, ads, new_ads, seen = [], [], [], [], set()
    for d in stream(cfg):
        truths.append(window_truth(cfg, d))
        users.append(d.columns["user_id"])
        ads.append(d.columns["ad_id"])
        shown = set(d.columns["ad_id"].tolist())
        new_ads.append(len(shown - seen) / len(shown))
        seen |= shown
    names = cfg.vertical_names
    tctr = np.array([t["all"]["true_ctr"] for t in truths])
    tv = np.array([[t[v]["true_ctr"] for v in names] for t in truths])
    per_user = np.bincount(np.concatenate(users))
    per_user = per_user[per_user > 0]
    per_ad = np.bincount(np.concatenate(ads))
    per_ad = per_ad[per_ad > 0]
    bayes = {v: float(np.mean([t[v]["bayes_ne"] for t in truths])) for v in [*names, "all"]}
    return {
        "generate": gen,
        "ctr_per_window": [t["all"]["ctr"] for t in truths],
        "ctr_per_vertical": {v: float(np.mean([t[v]["ctr"] for t in truths])) for v in names},
        "shares": dict(zip(names, cfg.vertical_shares().tolist(), strict=True)),
        "users": {
            "seen": len(per_user),
            "impressions_mean": float(per_user.mean()),
            "impressions_median": float(np.median(per_user)),
            "impressions_p90": float(np.percentile(per_user, 90)),
            "impressions_p99": float(np.percentile(per_user, 99)),
            "top10pct_share": _tail_share(per_user, 0.1),
        },
        "ads": {
            "seen": len(per_ad),
            "top1pct_share": _tail_share(per_ad, 0.01),
            "top10pct_share": _tail_share(per_ad, 0.1),
            "shown_under_10": float((per_ad < 10).mean()),
            "new_share_after_w5": float(np.mean(new_ads[5:])) if len(new_ads) > 5 else None,
        },
        "drift": {
            "global_log_ctr_step_std": float(np.diff(np.log(tctr)).std()),
            "vertical_relative_log_ctr_step_std": float(
                np.diff(np.log(tv) - np.log(tctr)[:, None], axis=0).std()
            ),
        },
        "bayes_ne": bayes,
    }


def oracle_ladder(cfg: SyntheticConfig) -> dict[str, float]:
    """NE over the second half of oracles that know more and more of the truth (offsets refit)."""
    world = World(cfg)
    rows = [world.sample(w) for w in range(cfg.windows)]
    world.calibrate(world.logit(0, rows[0]))
    full = np.concatenate([world.logit(w, r) for w, r in enumerate(rows)])
    world.cfg = cfg.model_copy(update={"interaction_scale": 0.0})
    additive = np.concatenate([world.logit(w, r) for w, r in enumerate(rows)])
    world.cfg = cfg
    r = Rows(*(np.concatenate([getattr(x, f) for x in rows]) for f in Rows.__dataclass_fields__))
    p = world.prob(full)
    y = (np.random.default_rng([cfg.seed, 99]).random(len(p)) < p).astype(np.float64)
    late = np.repeat(np.arange(cfg.windows), cfg.rows_per_window) >= cfg.windows // 2
    affinity = full - additive
    cat = world.a_cat[r.ad]

    def group_mean(key: np.ndarray) -> np.ndarray:
        _, inv = np.unique(key, return_inverse=True)
        return (np.bincount(inv, affinity) / np.bincount(inv))[inv]

    def ne(z: np.ndarray) -> float:
        lo, hi = -10.0, 10.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if world.prob(z[late] + mid - world.base).mean() < p[late].mean():
                lo = mid
            else:
                hi = mid
        return float(normalized_entropy(world.prob(z[late] + mid - world.base), y[late]))

    return {
        "additive": ne(additive),
        "additive+user": ne(additive + group_mean(r.user)),
        "additive+user_x_cluster": ne(additive + group_mean(r.user * 1000 + world.cluster[cat])),
        "additive+user_x_category": ne(additive + group_mean(r.user * 1000 + cat)),
        "bayes": ne(full),
    }


def _platt(z: np.ndarray, y: np.ndarray, z_eval: np.ndarray) -> np.ndarray:
    """``sigmoid(a z_eval + b)`` with (a, b) fitted on ``(z, y)`` by Newton steps (an affine adapter)."""
    ab = np.array([1.0, 0.0])
    x = np.stack([z, np.ones_like(z)], axis=1)
    for _ in range(25):
        p = 1 / (1 + np.exp(-(x @ ab)))
        h = x.T @ (x * (p * (1 - p))[:, None]) + 1e-6 * np.eye(2)
        ab = ab - np.linalg.solve(h, x.T @ (p - y))
    return 1 / (1 + np.exp(-(ab[0] * z_eval + ab[1])))


def staleness_oracle(
    cfg: SyntheticConfig, levels: tuple[int, ...] = (1, 2, 4)
) -> dict[str, dict[str, float]]:
    """What drift alone costs a perfect but ``k``-window-stale model, and what a per-vertical affine
    (Platt) adapter on its logit recovers (fitted on half of the window's rows, scored on the other
    half). Windows from the second third on, averaged over windows and verticals."""
    world = World(cfg)
    world.calibrate(world.logit(0, world.sample(0)))
    drift = (world.level, world.level_vert, world.level_cluster)
    out: dict[int, list[tuple[float, float]]] = {k: [] for k in levels}
    for w in range(max(max(levels), cfg.windows // 3), cfg.windows):
        r = world.sample(w)
        p = world.prob(world.logit(w, r))
        y = (np.random.default_rng([cfg.seed, 98, w]).random(len(p)) < p).astype(np.float64)
        half = np.arange(len(y)) % 2 == 0
        for k in levels:
            saved = [a[w].copy() for a in drift]
            for a in drift:
                a[w] = a[w - k]
            ps = np.clip(world.prob(world.logit(w, r)), 1e-7, 1 - 1e-7)
            for a, s in zip(drift, saved, strict=True):
                a[w] = s
            z = np.log(ps / (1 - ps))
            for v in range(len(cfg.vertical_names)):
                fit, ev = half & (r.vert == v), ~half & (r.vert == v)
                fresh = normalized_entropy(p[ev], y[ev])
                stale = normalized_entropy(ps[ev], y[ev])
                adapted = normalized_entropy(_platt(z[fit], y[fit], z[ev]), y[ev])
                if None not in (fresh, stale, adapted):
                    out[k].append((stale - fresh, stale - adapted))
    res = {}
    for k, pairs in out.items():
        loss, gain = np.array(pairs).mean(axis=0)
        res[str(k)] = {"ne_loss_pts": float(100 * loss), "adapter_recovers": float(gain / loss)}
    return res


def fm_sizes(cfg: SyntheticConfig, sizes: list[str], out: Path) -> dict[str, dict[str, float]]:
    """Progressive NE/AUC (second half) of the FM presets trained by the real ``fm-train`` job."""
    from exfm_trainer import study

    preset = study.get_preset("quick").model_copy(update={"synthetic": cfg})
    run = study.prepare(out, preset)
    res = {}
    for size in sizes:
        cpu = time.process_time()
        m = study.ensure_fm(run, size, 0)
        half = m[len(m) // 2 :]
        res[size] = {
            "ne": study.second_half([x.ne for x in m]),
            "ne_median": statistics.median(x.ne for x in half),
            "auc": study.second_half([x.auc for x in m]),
            "cpu_s": time.process_time() - cpu,
        }
        print(size, json.dumps(res[size]), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="{}", help="SyntheticConfig fields (JSON) over the quick shape.")
    ap.add_argument("--fm", default="", help="FM presets to train, e.g. small,medium,large.")
    ap.add_argument("--out", type=Path, default=None, help="Work directory of the FM runs.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cfg = SyntheticConfig(**{**QUICK, **json.loads(args.config)})
    res: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "stream": stream_stats(cfg)}
    print(json.dumps(res["stream"], indent=1), flush=True)
    res["oracles"] = oracle_ladder(cfg)
    print(json.dumps(res["oracles"], indent=1), flush=True)
    res["staleness_oracle"] = staleness_oracle(cfg)
    print(json.dumps(res["staleness_oracle"], indent=1), flush=True)
    if args.fm:
        with tempfile.TemporaryDirectory() as tmp:
            res["fm"] = fm_sizes(cfg, args.fm.split(","), args.out or Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
