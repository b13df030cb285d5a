"""The synthetic stream's latent world, its ground truth and its engagement history (numpy only).

:class:`World` draws every latent quantity once from the seed; :func:`stream` walks the windows in
order, sampling impressions, their true click probabilities and labels, and computes history
features from the *labels of earlier windows* only (never from latents). See docs/data.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from exfm_trainer.data.synthetic import SyntheticConfig

N_POSITIONS = 5
N_DEVICES = 3
DAYPARTS = 4
HIST_MAX = 8
SOFTMAX_TEMPERATURE = 0.3
"""Temperature of the soft maximum over a user's interests (0 would be a hard max)."""
PRIOR_IMPRESSIONS = {"ad": 50.0, "user": 20.0, "user_cat": 5.0}
"""Pseudo-impressions of the smoothed CTR features (shrinkage toward the parent rate)."""
GLOBAL_PRIOR = (0.5, 10.0)
"""Pseudo clicks / impressions of the global CTR before any window was observed."""

MIX = {"cat": (0.8, 0.6), "user": (0.9, 0.45), "ad": (0.8, 0.4, 0.45)}
"""Loadings of the latent factors: a category on its cluster and itself, a user interest on a
cluster and itself, an ad on its category, advertiser and itself (most taste is cluster-level, so
a user's engagement in one vertical predicts the others)."""

_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(12)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()

LabelHook = Callable[[int, np.ndarray], np.ndarray]
"""``hook(window, labels) -> labels``: replaces a window's labels (tests of history causality)."""


def _newborn(alive: int, churn: float) -> int:
    return round(alive * churn)


def _cohorts(
    rng: np.random.Generator, initial: int, churn: float, windows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Birth and retire windows (retire exclusive): an initial cohort plus newborns each window.

    The initial cohort was born before the stream (ages drawn from the stationary distribution,
    so ``*_age`` features do not grow with the window index); lifetimes are memoryless.
    """
    newborn = np.repeat(np.arange(1, windows, dtype=np.int64), _newborn(initial, churn))
    if churn <= 0:
        birth = np.concatenate([np.zeros(initial, dtype=np.int64), newborn])
        return birth, np.full(len(birth), windows + 1, dtype=np.int64)
    birth = np.concatenate([1 - rng.geometric(churn, size=initial).astype(np.int64), newborn])
    start = np.maximum(birth, 0)
    return birth, start + rng.geometric(churn, size=len(birth)).astype(np.int64)


def total_users(cfg: SyntheticConfig) -> int:
    return cfg.initial_users + _newborn(cfg.initial_users, cfg.user_churn) * (cfg.windows - 1)


def total_ads(cfg: SyntheticConfig) -> int:
    per = cfg.ads_per_vertical + _newborn(cfg.ads_per_vertical, cfg.ad_churn) * (cfg.windows - 1)
    return per * len(cfg.vertical_names)


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], step: float, rho: float) -> np.ndarray:
    """AR(1) walks over axis 0 starting at 0: ``x_t = rho x_{t-1} + N(0, step)``."""
    eps = rng.normal(0, step, shape) if step > 0 else np.zeros(shape)
    out = np.zeros(shape)
    for t in range(1, shape[0]):
        out[t] = rho * out[t - 1] + eps[t]
    return out


@dataclass
class Rows:
    """One window's impressions (indices into the world) before labels."""

    ts: np.ndarray
    hour: np.ndarray
    vert: np.ndarray
    user: np.ndarray
    ad: np.ndarray
    pos: np.ndarray
    dev: np.ndarray


class World:
    """Every latent quantity of the stream, drawn once from ``cfg.seed``."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        k, nc, nl = cfg.latent_dim, cfg.categories, cfg.category_clusters
        nv = len(cfg.vertical_names)
        self.shares = cfg.vertical_shares()
        # categories in clusters; a category's factor is its cluster's plus its own
        self.cluster = rng.permutation(np.arange(nc) % nl)
        z_cluster = rng.normal(0, 1, (nl, k))
        c_cl, c_own = MIX["cat"]
        self.z_cat = c_cl * z_cluster[self.cluster] + c_own * rng.normal(0, 1, (nc, k))
        self.phase = rng.uniform(0, 2 * np.pi, nl)
        # verticals: level, position-bias slope, own category mix
        self.b_vert = rng.normal(0, 0.3, nv)
        self.pos_eff = -rng.uniform(0.15, 0.45, nv)[:, None] * np.arange(N_POSITIONS)[None, :]
        cat_pref = rng.dirichlet(np.full(nc, 0.3), size=nv)
        # advertisers
        self.z_adv = rng.normal(0, 1, (cfg.advertisers, k))
        self.b_adv = rng.normal(0, 0.3, cfg.advertisers)
        # users (shared by every vertical): 1..interests interest vectors near category clusters
        self.u_birth, self.u_retire = _cohorts(rng, cfg.initial_users, cfg.user_churn, cfg.windows)
        nu, m = len(self.u_birth), cfg.interests
        self.activity = rng.lognormal(0, cfg.user_activity_sigma, nu)
        self.b_user = rng.normal(0, 0.4, nu)
        focus = rng.integers(0, nl, (nu, m))
        u_cl, u_own = MIX["user"]
        self.z_user = u_cl * z_cluster[focus] + u_own * rng.normal(0, 1, (nu, m, k))
        n_int = rng.integers(1, m + 1, nu)
        self.int_bias = np.where(np.arange(m)[None, :] < n_int[:, None], rng.normal(0, 0.3, (nu, m)), -np.inf)
        self.main_device = rng.choice(N_DEVICES, size=nu, p=[0.6, 0.3, 0.1])
        # ads: each vertical has its own inventory over its favourite categories, Zipf popularity
        births, retires = [], []
        for _ in range(nv):
            b, r = _cohorts(rng, cfg.ads_per_vertical, cfg.ad_churn, cfg.windows)
            births.append(b)
            retires.append(r)
        self.a_birth, self.a_retire = np.concatenate(births), np.concatenate(retires)
        self.a_vert = np.repeat(np.arange(nv), [len(b) for b in births])
        na = len(self.a_birth)
        cdf = np.cumsum(cat_pref, axis=1)
        self.a_cat = np.minimum((rng.random(na)[:, None] > cdf[self.a_vert]).sum(axis=1), nc - 1)
        self.a_adv = rng.integers(0, cfg.advertisers, na)
        a_cat, a_adv, a_own = MIX["ad"]
        self.z_ad = (
            a_cat * self.z_cat[self.a_cat]
            + a_adv * self.z_adv[self.a_adv]
            + a_own * rng.normal(0, 1, (na, k))
        )
        self.b_ad = rng.normal(0, 0.5, na)
        self.a_weight = (1 + rng.random(na) * cfg.ads_per_vertical) ** -cfg.ad_zipf
        # context: (device, daypart) modulates which latent dimensions matter (3-way cross)
        self.ctx = rng.normal(0, 1, (N_DEVICES, DAYPARTS, k))
        self.dev_eff = np.array([0.0, -0.2, 0.25])
        # drift (zero without drift): AR(1) walks, variance split by the configured shares
        drng = np.random.default_rng([cfg.seed, 4])
        s, rho, w = (cfg.drift_strength if cfg.drift else 0.0), cfg.drift_persistence, cfg.windows
        self.level = _ar1(drng, (w,), s * np.sqrt(cfg.drift_global), rho)
        week = 2 * np.pi * np.arange(w) / 7 + drng.uniform(0, 2 * np.pi)
        self.level += (cfg.weekly_amplitude if cfg.drift else 0.0) * (np.sin(week) - np.sin(week[0]))
        self.level_vert = _ar1(drng, (w, nv), s * np.sqrt(cfg.drift_vertical), rho)
        self.level_cluster = _ar1(drng, (w, nl), s * np.sqrt(cfg.drift_cluster), rho)
        self.base = 0.0

    def sample(self, w: int) -> Rows:
        """Window ``w``'s impressions: time, vertical, user (by activity), ad (by popularity), context."""
        cfg, n = self.cfg, self.cfg.rows_per_window
        rng = np.random.default_rng([cfg.seed, 1, w])
        offs = np.sort(rng.integers(0, cfg.window_seconds, n))
        ts = cfg.start_timestamp + w * cfg.window_seconds + offs
        hour = (offs * 24 // cfg.window_seconds) % 24
        vert = rng.choice(len(self.shares), size=n, p=self.shares)
        alive = np.nonzero((self.u_birth <= w) & (self.u_retire > w))[0]
        if len(alive) == 0:
            alive = np.arange(len(self.u_birth))
        user = alive[rng.choice(len(alive), size=n, p=self.activity[alive] / self.activity[alive].sum())]
        ad = np.zeros(n, dtype=np.int64)
        for v in range(len(self.shares)):
            rows = np.nonzero(vert == v)[0]
            pool = np.nonzero((self.a_vert == v) & (self.a_birth <= w) & (self.a_retire > w))[0]
            if len(pool) == 0:
                pool = np.nonzero(self.a_vert == v)[0]
            weights = self.a_weight[pool] / self.a_weight[pool].sum()
            ad[rows] = pool[rng.choice(len(pool), size=len(rows), p=weights)]
        pos = rng.choice(N_POSITIONS, size=n, p=[0.35, 0.25, 0.18, 0.12, 0.10])
        other = rng.integers(0, N_DEVICES, n)
        dev = np.where(rng.random(n) < 0.8, self.main_device[user], other)
        return Rows(ts, hour, vert, user, ad, pos, dev)

    def logit(self, w: int, r: Rows) -> np.ndarray:
        """The true logit of each row, without ``base`` and the unobserved per-row noise."""
        cfg, k = self.cfg, self.cfg.latent_dim
        cat = self.a_cat[r.ad]
        clus = self.cluster[cat]
        z_eff = self.z_ad[r.ad] * (1 + cfg.context_cross * self.ctx[r.dev, r.hour * DAYPARTS // 24])
        scores = np.einsum("nmk,nk->nm", self.z_user[r.user], z_eff) / np.sqrt(k) + self.int_bias[r.user]
        top = scores.max(axis=1)
        t = SOFTMAX_TEMPERATURE
        affinity = top + t * np.log(np.exp((scores - top[:, None]) / t).sum(axis=1))
        return (
            self.level[w]
            + self.level_vert[w, r.vert]
            + self.level_cluster[w, clus]
            + self.b_vert[r.vert]
            + self.pos_eff[r.vert, r.pos]
            + self.dev_eff[r.dev]
            + 0.25 * np.sin(2 * np.pi * r.hour / 24 + self.phase[clus])
            + self.b_user[r.user]
            + self.b_ad[r.ad]
            + self.b_adv[self.a_adv[r.ad]]
            + cfg.interaction_scale * affinity
        )

    def prob(self, logit: np.ndarray) -> np.ndarray:
        """Click probability given the row's features and latents: the unobserved logit noise
        (``label_noise``) integrated out by Gauss-Hermite quadrature."""
        z = logit + self.base
        if self.cfg.label_noise <= 0:
            return 1 / (1 + np.exp(-z))
        eps = self.cfg.label_noise * _GH_NODES
        return (1 / (1 + np.exp(-(z[:, None] + eps[None, :])))) @ _GH_WEIGHTS

    def calibrate(self, logit: np.ndarray) -> None:
        """Set ``base`` so the mean probability of these rows is ``base_ctr``."""
        lo, hi = -20.0, 10.0
        for _ in range(40):
            self.base = (lo + hi) / 2
            if self.prob(logit).mean() < self.cfg.base_ctr:
                lo = self.base
            else:
                hi = self.base
        self.base = (lo + hi) / 2


class History:
    """Decayed engagement counters over the windows seen so far (labels only, no latents)."""

    def __init__(self, n_users: int, n_ads: int, n_cats: int, n_verts: int, decay: float) -> None:
        self.decay = decay
        self.u_imp, self.u_clk = np.zeros(n_users), np.zeros(n_users)
        self.uc_imp, self.uc_clk = np.zeros((n_users, n_cats)), np.zeros((n_users, n_cats))
        self.uv_imp, self.uv_clk = np.zeros((n_users, n_verts)), np.zeros((n_users, n_verts))
        self.a_imp, self.a_clk = np.zeros(n_ads), np.zeros(n_ads)
        self.g_imp, self.g_clk = 0.0, 0.0
        self.windows = 0.0
        """Decayed number of windows seen: counts / windows are decayed per-window averages."""

    def features(self, user: np.ndarray, ad: np.ndarray, cat: np.ndarray, vert: np.ndarray) -> dict:
        """History features of rows (dense columns and ``user_hist_categories`` offsets/values)."""
        pc, pi = GLOBAL_PRIOR
        prior = (self.g_clk + pc) / (self.g_imp + pi)
        ka, ku, kc = PRIOR_IMPRESSIONS["ad"], PRIOR_IMPRESSIONS["user"], PRIOR_IMPRESSIONS["user_cat"]
        u_imp, u_clk = self.u_imp[user], self.u_clk[user]
        u_ctr = (u_clk + ku * prior) / (u_imp + ku)
        uc_imp, uc_clk = self.uc_imp[user, cat], self.uc_clk[user, cat]
        xv_imp = u_imp - self.uv_imp[user, vert]
        xv_clk = u_clk - self.uv_clk[user, vert]
        a_imp = self.a_imp[ad]
        xv_ctr = (xv_clk + ku * prior) / (xv_imp + ku)
        per = 1 / max(self.windows, 1.0)
        out = {
            "user_past_impressions": per * u_imp,
            "user_ctr_lift": np.log(u_ctr / prior),
            "user_cat_impressions": per * uc_imp,
            "user_cat_lift": np.log((uc_clk + kc * u_ctr) / (uc_imp + kc) / u_ctr),
            "user_xv_lift": np.log(xv_ctr / prior),
            "ad_past_impressions": per * a_imp,
            "ad_ctr_lift": np.log((self.a_clk[ad] + ka * prior) / (a_imp + ka) / prior),
        }
        out = {name: v.astype(np.float32) for name, v in out.items()}
        uniq, inv = np.unique(user, return_inverse=True)
        clicks = self.uc_clk[uniq]
        top = np.argsort(-clicks, axis=1, kind="stable")[:, :HIST_MAX]
        keep = np.take_along_axis(clicks, top, axis=1) > 0.05
        lengths = keep.sum(axis=1)[inv]
        out["hist_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        out["hist_values"] = top[inv][keep[inv]].astype(np.int64)
        return out

    def update(
        self, user: np.ndarray, ad: np.ndarray, cat: np.ndarray, vert: np.ndarray, y: np.ndarray
    ) -> None:
        """Decay every counter, then add one window's impressions and clicks."""
        d, yf = self.decay, y.astype(np.float64)
        for arr in (self.u_imp, self.u_clk, self.uc_imp, self.uc_clk, self.uv_imp, self.uv_clk):
            arr *= d
        self.a_imp *= d
        self.a_clk *= d
        self.g_imp, self.g_clk = d * self.g_imp + len(y), d * self.g_clk + yf.sum()
        self.windows = d * self.windows + 1
        nu, nc, nv = self.uc_imp.shape[0], self.uc_imp.shape[1], self.uv_imp.shape[1]
        self.u_imp += np.bincount(user, minlength=nu)
        self.u_clk += np.bincount(user, yf, minlength=nu)
        uc = user * nc + cat
        self.uc_imp += np.bincount(uc, minlength=nu * nc).reshape(nu, nc)
        self.uc_clk += np.bincount(uc, yf, minlength=nu * nc).reshape(nu, nc)
        uv = user * nv + vert
        self.uv_imp += np.bincount(uv, minlength=nu * nv).reshape(nu, nv)
        self.uv_clk += np.bincount(uv, yf, minlength=nu * nv).reshape(nu, nv)
        self.a_imp += np.bincount(ad, minlength=len(self.a_imp))
        self.a_clk += np.bincount(ad, yf, minlength=len(self.a_imp))


@dataclass
class WindowData:
    """One generated window: its columns (numpy), true click probabilities and labels."""

    window: int
    columns: dict[str, np.ndarray]
    """Raw columns: ids, context, ages, history features, ``vert`` (vertical index), ``timestamp``,
    ``hist_offsets`` / ``hist_values`` (the ``user_hist_categories`` list column)."""
    prob: np.ndarray
    label: np.ndarray


def stream(
    cfg: SyntheticConfig, label_hook: LabelHook | None = None, until: int | None = None
) -> Iterator[WindowData]:
    """Windows ``0..until`` (default: all) in order. Window ``w``'s history features depend only on
    the labels of windows ``< w``; ``label_hook`` may replace a window's labels (tests)."""
    world = World(cfg)
    hist = History(
        len(world.u_birth), len(world.a_birth), cfg.categories, len(world.shares), cfg.history_decay
    )
    last = cfg.windows - 1 if until is None else until
    for w in range(last + 1):
        r = world.sample(w)
        logit = world.logit(w, r)
        if w == 0:
            world.calibrate(logit)
        prob = world.prob(logit)
        label = (np.random.default_rng([cfg.seed, 3, w]).random(len(prob)) < prob).astype(np.int8)
        if label_hook is not None:
            label = np.asarray(label_hook(w, label), dtype=np.int8)
        cat = world.a_cat[r.ad]
        cols = {
            "user_id": r.user,
            "ad_id": r.ad,
            "advertiser_id": world.a_adv[r.ad],
            "category_id": cat,
            "position": r.pos,
            "device": r.dev,
            "hour": r.hour,
            "vert": r.vert,
            "timestamp": r.ts,
            "user_age": (w - world.u_birth[r.user]).astype(np.float32),
            "ad_age": (w - world.a_birth[r.ad]).astype(np.float32),
            **hist.features(r.user, r.ad, cat, r.vert),
        }
        yield WindowData(w, cols, prob, label)
        hist.update(r.user, r.ad, cat, r.vert, label)
