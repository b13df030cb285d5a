"""A synthetic multi-vertical ads stream with real structure, deterministic per seed.

Generative model (see docs/data.md): users and ads carry latent factors; users are shared by
every vertical while each vertical has its own ad inventory drawn from overlapping categories.
For a row of vertical ``v`` shown to user ``u`` with ad ``a`` at position ``p``, hour ``h`` and
device ``d`` in window ``w``::

    logit = base + level[w] + b_vert[v] + b_user[u] + b_ad[a] + b_adv[adv(a)] + drift_cat[w, c(a)]
            + s * <z_u, z_a> / sqrt(K) + pos[p] + dev[d] + 0.35 * sin(2 pi h / 24 + phase[c(a)])
            + N(0, label_noise)
    label ~ Bernoulli(sigmoid(logit))

``z_a`` mixes category, advertiser and ad-own factors, so a user's taste learned in one vertical
transfers to others; heavy-tailed user activity gives rare ids; users and ads are born and
retire over windows (churn); ``level`` and ``drift_cat`` are random walks over windows (drift).
``base`` is calibrated so window 0's CTR is ``base_ctr``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from exfm_trainer.data.windows import (
    DataError,
    as_storage,
    is_window_ready,
    read_dataset_info,
    write_dataset_info,
    write_window,
)
from exfm_trainer.jobs import DatasetRef
from exfm_trainer.schema import FeatureSchema, SparseFeature
from exfm_trainer.storage import Storage

VERTICAL_NAMES = ("feed", "video", "search", "shop", "news", "games", "travel", "music")
N_POSITIONS = 5
N_DEVICES = 3
HIST_MAX = 8


class SyntheticConfig(BaseModel):
    """Parameters of the synthetic stream. Equal configs give byte-identical data."""

    model_config = ConfigDict(extra="forbid")

    windows: int = Field(default=12, ge=1)
    rows_per_window: int = Field(default=20_000, ge=1)
    verticals: int | list[str] = Field(default=4, description="How many, or their names.")
    seed: int = 0
    drift: bool = Field(default=True, description="CTR drift over windows (level and per category).")
    drift_strength: float = Field(default=0.3, ge=0, description="Std of the per-window drift steps.")
    users: int | None = Field(
        default=None, ge=1, description="Users alive at window 0 (default: windows*rows_per_window/60)."
    )
    ads_per_vertical: int = Field(default=150, ge=1, description="Ads alive per vertical at a time.")
    advertisers: int = Field(default=120, ge=1)
    categories: int = Field(default=40, ge=2)
    latent_dim: int = Field(default=8, ge=1)
    interaction_scale: float = Field(default=1.5, ge=0, description="Weight of the user x ad term.")
    base_ctr: float = Field(default=0.05, gt=0, lt=1, description="Window-0 CTR.")
    label_noise: float = Field(default=0.5, ge=0, description="Std of logit noise.")
    user_churn: float = Field(default=0.05, ge=0, lt=1, description="Fraction of users retiring per window.")
    ad_churn: float = Field(default=0.2, ge=0, lt=1, description="Fraction of ads retiring per window.")
    vertical_skew: float = Field(
        default=0.6, gt=0, le=1, description="Traffic share ratio between consecutive verticals."
    )
    embedding_dim: int = Field(default=16, ge=1)
    max_hash_buckets: int | None = Field(default=None, ge=1)
    window_seconds: int = Field(default=86_400, ge=1)
    start_timestamp: int = Field(default=1_700_006_400, description="Start of window 0 (epoch seconds).")

    @field_validator("verticals")
    @classmethod
    def _verticals(cls, v: int | list[str]) -> int | list[str]:
        if isinstance(v, int) and v < 1:
            raise ValueError("verticals must be >= 1")
        if isinstance(v, list) and (not v or len(set(v)) != len(v) or not all(v)):
            raise ValueError("vertical names must be non-empty and unique")
        return v

    @property
    def vertical_names(self) -> list[str]:
        if isinstance(self.verticals, list):
            return list(self.verticals)
        return [VERTICAL_NAMES[i] if i < len(VERTICAL_NAMES) else f"v{i}" for i in range(self.verticals)]

    @property
    def initial_users(self) -> int:
        return self.users or max(100, self.windows * self.rows_per_window // 60)

    @property
    def total_users(self) -> int:
        return self.initial_users + _newborn(self.initial_users, self.user_churn) * (self.windows - 1)

    @property
    def total_ads(self) -> int:
        per = self.ads_per_vertical + _newborn(self.ads_per_vertical, self.ad_churn) * (self.windows - 1)
        return per * len(self.vertical_names)

    def vertical_shares(self) -> np.ndarray:
        raw = self.vertical_skew ** np.arange(len(self.vertical_names), dtype=np.float64)
        return raw / raw.sum()


def _newborn(alive: int, churn: float) -> int:
    return round(alive * churn)


def _buckets(cardinality: int, cfg: SyntheticConfig) -> int:
    b = max(8, 4 * cardinality)
    return min(b, cfg.max_hash_buckets) if cfg.max_hash_buckets else b


SPARSE = (
    "user_id",
    "ad_id",
    "advertiser_id",
    "category_id",
    "user_hist_categories",
    "position",
    "device",
    "hour",
    "vertical",
)
DENSE = ("user_age", "ad_age", "user_hist_len", "ad_prior_ctr")
IDENTITY_MAX = 1000
"""Columns with at most this many ids get their own row per id (no hash collisions)."""


def synthetic_schema(config: SyntheticConfig) -> FeatureSchema:
    """The feature schema of :func:`generate`'s output."""
    card = {
        "user_id": config.total_users,
        "ad_id": config.total_ads,
        "advertiser_id": config.advertisers,
        "category_id": config.categories,
        "user_hist_categories": config.categories,
        "position": N_POSITIONS,
        "device": N_DEVICES,
        "hour": 24,
        "vertical": len(config.vertical_names),
    }
    sparse = []
    for name in SPARSE:
        encoding: dict = {"hash_buckets": _buckets(card[name], config)}
        if name == "vertical":
            encoding = {"vocabulary": list(config.vertical_names)}
        elif card[name] <= IDENTITY_MAX:
            encoding = {"identity": card[name]}
        sparse.append(
            SparseFeature(
                name=name,
                embedding_dim=config.embedding_dim,
                multi_valued=name == "user_hist_categories",
                **encoding,
            )
        )
    return FeatureSchema(
        label="label", dense=list(DENSE), sparse=sparse, vertical="vertical", timestamp="timestamp"
    )


def _lifetimes(rng: np.random.Generator, n: int, churn: float, horizon: int) -> np.ndarray:
    if churn <= 0:
        return np.full(n, horizon + 1, dtype=np.int64)
    return rng.geometric(churn, size=n).astype(np.int64)


def _cohorts(
    rng: np.random.Generator, initial: int, churn: float, windows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Birth and retire windows (retire exclusive) for an initial cohort plus newborns each window."""
    births = [np.zeros(initial, dtype=np.int64)]
    born = _newborn(initial, churn)
    for w in range(1, windows):
        births.append(np.full(born, w, dtype=np.int64))
    birth = np.concatenate(births)
    return birth, birth + _lifetimes(rng, len(birth), churn, windows)


@dataclass
class _World:
    """Every latent quantity of the stream, drawn once from the seed."""

    cfg: SyntheticConfig

    def __post_init__(self) -> None:
        cfg, k = self.cfg, self.cfg.latent_dim
        rng = np.random.default_rng([cfg.seed, 0])
        nv, nc = len(cfg.vertical_names), cfg.categories
        self.shares = cfg.vertical_shares()
        self.b_vert = rng.normal(0, 0.3, nv)
        # categories, advertisers
        self.z_cat = rng.normal(0, 1, (nc, k))
        self.phase_cat = rng.uniform(0, 2 * np.pi, nc)
        self.z_adv = rng.normal(0, 1, (cfg.advertisers, k))
        self.b_adv = rng.normal(0, 0.3, cfg.advertisers)
        # users: shared by all verticals
        self.u_birth, self.u_retire = _cohorts(rng, cfg.initial_users, cfg.user_churn, cfg.windows)
        nu = len(self.u_birth)
        self.z_user = rng.normal(0, 1, (nu, k))
        self.b_user = rng.normal(0, 0.5, nu)
        self.activity = rng.lognormal(0, 1.0, nu)
        # user history: categories the user engaged with (taste-driven, noisy)
        taste = self.z_user @ self.z_cat.T / np.sqrt(k) * 1.5 + rng.gumbel(size=(nu, nc))
        top = np.argsort(-taste, axis=1)[:, :HIST_MAX]
        hist_len = np.minimum(rng.poisson(1 + 2 * np.log1p(self.activity)), HIST_MAX)
        self.hist_len = hist_len
        mask = np.arange(HIST_MAX)[None, :] < hist_len[:, None]
        offsets = np.concatenate([[0], np.cumsum(hist_len)]).astype(np.int32)
        self.user_hist = pa.ListArray.from_arrays(pa.array(offsets), pa.array(top[mask].astype(np.int64)))
        # ads: each vertical has its own inventory over its favourite categories
        cat_pref = rng.dirichlet(np.full(nc, 0.3), size=nv)
        births, retires, verts = [], [], []
        for v in range(nv):
            b, r = _cohorts(rng, cfg.ads_per_vertical, cfg.ad_churn, cfg.windows)
            births.append(b)
            retires.append(r)
            verts.append(np.full(len(b), v, dtype=np.int64))
        self.a_birth, self.a_retire = np.concatenate(births), np.concatenate(retires)
        self.a_vert = np.concatenate(verts)
        na = len(self.a_birth)
        self.a_cat = np.array([rng.choice(nc, p=cat_pref[v]) for v in self.a_vert], dtype=np.int64)
        self.a_adv = rng.integers(0, cfg.advertisers, na)
        self.z_ad = (
            np.sqrt(0.6) * self.z_cat[self.a_cat]
            + np.sqrt(0.2) * self.z_adv[self.a_adv]
            + np.sqrt(0.2) * rng.normal(0, 1, (na, k))
        )
        self.b_ad = rng.normal(0, 0.4, na)
        self.a_weight = rng.lognormal(0, 0.7, na)
        # context effects
        self.pos_eff = -0.35 * np.arange(N_POSITIONS)
        self.dev_eff = np.array([0.0, -0.25, 0.3])
        # drift: random walks over windows (zero without drift)
        steps = cfg.drift_strength if cfg.drift else 0.0
        lvl = rng.normal(0, steps * 0.5, cfg.windows)
        cat = rng.normal(0, steps, (cfg.windows, nc))
        lvl[0], cat[0] = 0.0, 0.0
        self.level, self.drift_cat = np.cumsum(lvl), np.cumsum(cat, axis=0)
        self.base = 0.0
        self.base = self._calibrate()

    def _calibrate(self) -> float:
        _, logit = self.window(0, with_noise_rng=np.random.default_rng([self.cfg.seed, 2]))
        lo, hi = -15.0, 5.0
        for _ in range(50):
            mid = (lo + hi) / 2
            if np.mean(1 / (1 + np.exp(-(logit + mid)))) < self.cfg.base_ctr:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    @cached_property
    def _span(self) -> int:
        return self.cfg.window_seconds

    def window(self, w: int, with_noise_rng: np.random.Generator | None = None) -> tuple[dict, np.ndarray]:
        """Columns of window ``w`` (without labels) and each row's logit (noise included)."""
        cfg, n = self.cfg, self.cfg.rows_per_window
        rng = with_noise_rng or np.random.default_rng([cfg.seed, 1, w])
        offs = np.sort(rng.integers(0, self._span, n))
        ts = cfg.start_timestamp + w * self._span + offs
        hour = (offs // 3600) % 24
        vert = rng.choice(len(self.shares), size=n, p=self.shares)
        alive_u = np.nonzero((self.u_birth <= w) & (self.u_retire > w))[0]
        if len(alive_u) == 0:
            alive_u = np.arange(len(self.u_birth))
        pu = self.activity[alive_u] / self.activity[alive_u].sum()
        user = alive_u[rng.choice(len(alive_u), size=n, p=pu)]
        ad = np.empty(n, dtype=np.int64)
        for v in range(len(self.shares)):
            rows = np.nonzero(vert == v)[0]
            if len(rows) == 0:
                continue
            pool = np.nonzero((self.a_vert == v) & (self.a_birth <= w) & (self.a_retire > w))[0]
            if len(pool) == 0:
                pool = np.nonzero(self.a_vert == v)[0]
            pa_ = self.a_weight[pool] / self.a_weight[pool].sum()
            ad[rows] = pool[rng.choice(len(pool), size=len(rows), p=pa_)]
        pos = rng.choice(N_POSITIONS, size=n, p=[0.35, 0.25, 0.18, 0.12, 0.10])
        dev = rng.choice(N_DEVICES, size=n, p=[0.6, 0.3, 0.1])
        cat, adv = self.a_cat[ad], self.a_adv[ad]
        k = cfg.latent_dim
        inter = np.einsum("ij,ij->i", self.z_user[user], self.z_ad[ad]) / np.sqrt(k)
        logit = (
            self.base
            + self.level[w]
            + self.b_vert[vert]
            + self.b_user[user]
            + self.b_ad[ad]
            + self.b_adv[adv]
            + self.drift_cat[w, cat]
            + cfg.interaction_scale * inter
            + self.pos_eff[pos]
            + self.dev_eff[dev]
            + 0.35 * np.sin(2 * np.pi * hour / 24 + self.phase_cat[cat])
            + rng.normal(0, cfg.label_noise, n)
        )
        prior = 1 / (1 + np.exp(-(self.base + self.b_ad[ad] + self.b_adv[adv])))
        cols = {
            "user_id": user,
            "ad_id": ad,
            "advertiser_id": adv,
            "category_id": cat,
            "position": pos,
            "device": dev,
            "hour": hour,
            "vert": vert,
            "timestamp": ts,
            "user_age": (w - self.u_birth[user]).astype(np.float32),
            "ad_age": (w - self.a_birth[ad]).astype(np.float32),
            "user_hist_len": self.hist_len[user].astype(np.float32),
            "ad_prior_ctr": (1000 * prior * rng.lognormal(0, 0.3, n)).astype(np.float32),
        }
        return cols, logit

    def table(self, w: int) -> tuple[pa.Table, np.ndarray]:
        """Window ``w`` as an Arrow table, and the true click probability of each row."""
        cols, logit = self.window(w)
        rng = np.random.default_rng([self.cfg.seed, 3, w])
        prob = 1 / (1 + np.exp(-logit))
        label = (rng.random(len(prob)) < prob).astype(np.int8)
        names = np.array(self.cfg.vertical_names, dtype=object)
        data = {
            "label": pa.array(label),
            **{c: pa.array(cols[c]) for c in DENSE},
            "user_id": pa.array(cols["user_id"]),
            "ad_id": pa.array(cols["ad_id"]),
            "advertiser_id": pa.array(cols["advertiser_id"]),
            "category_id": pa.array(cols["category_id"]),
            "user_hist_categories": self.user_hist.take(pa.array(cols["user_id"])),
            "position": pa.array(cols["position"]),
            "device": pa.array(cols["device"]),
            "hour": pa.array(cols["hour"]),
            "vertical": pa.array(names[cols["vert"]], type=pa.string()),
            "timestamp": pa.array(cols["timestamp"], type=pa.int64()),
        }
        return pa.table(data), prob


def generate_window(config: SyntheticConfig, window: int) -> tuple[pa.Table, np.ndarray]:
    """One window as an Arrow table (not written) and each row's true click probability.

    The probabilities are for analysis (oracle metrics, tests); they are never written.
    """
    return _World(config).table(window)


def _ref(uri: str | os.PathLike[str] | Storage, schema: FeatureSchema) -> DatasetRef:
    text = uri.root_uri if isinstance(uri, Storage) else os.fspath(uri)
    return DatasetRef(uri=text, schema=schema)


def generate(
    uri: str | os.PathLike[str] | Storage,
    config: SyntheticConfig,
    *,
    overwrite: bool = False,
    rows_per_file: int | None = None,
) -> DatasetRef:
    """Write the stream's windows under ``uri`` and return its :class:`DatasetRef`.

    Idempotent: windows already written by the same config are kept (an interrupted run resumes).
    A dataset written by a different config raises DataError unless ``overwrite``.
    """
    storage = as_storage(uri)
    schema = synthetic_schema(config)
    info = {
        "generator": "exfm-synthetic",
        "config": config.model_dump(mode="json"),
        "schema": schema.model_dump(mode="json"),
    }
    existing = read_dataset_info(storage)
    if existing is not None and existing.get("config") != info["config"]:
        if not overwrite:
            raise DataError(
                f"{storage.root_uri} already holds a dataset written by another config; pick a new "
                "root, or pass overwrite=True (--overwrite) to replace it"
            )
        for name in storage.list_dirs(""):
            if name.startswith("window="):
                storage.delete_prefix(name + "/")
    write_dataset_info(storage, info)
    world = _World(config)
    for w in range(config.windows):
        if is_window_ready(storage, w) and existing is not None and existing.get("config") == info["config"]:
            continue
        table, _ = world.table(w)
        write_window(storage, w, table, rows_per_file=rows_per_file or config.rows_per_window, overwrite=True)
    return _ref(uri, schema)
