"""A synthetic multi-vertical ads stream that rewards a broad, large teacher; deterministic per seed.

Generative model (details and the real-log statistics it imitates: docs/data.md). Users are shared by
every vertical and carry 1..``interests`` interest vectors; each vertical has its own ad inventory
(Zipf popularity) over its favourite categories. For a row of vertical ``v``, user ``u``, ad ``a``
(category ``c`` in cluster ``k``), position ``p``, device ``d``, hour ``h`` in window ``w``::

    logit = base + drift_global[w] + drift_vertical[w, v] + drift_cluster[w, k]
            + b_vert[v] + pos[v, p] + dev[d] + 0.25 sin(2 pi h / 24 + phase[k])
            + b_user[u] + b_ad[a] + b_adv[adv(a)]
            + s * softmax_m( <z_u,m , z_a * (1 + g * ctx[d, daypart(h)])> / sqrt(K) + bias_u,m )
    label ~ Bernoulli(E_eps sigmoid(logit + eps)),  eps ~ N(0, label_noise) unobserved

History features (``user_*``, ``ad_past_*``, ``user_hist_categories``) are decayed counters of the
*labels of earlier windows*; nothing written is computed from the latents. The true probabilities
are never written: the Bayes NE and CTR per window and vertical go into ``dataset.json``
(:func:`bayes_ne`).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from exfm_trainer.data.synthetic_world import (
    N_DEVICES,
    N_POSITIONS,
    WindowData,
    stream,
    total_ads,
    total_users,
)
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
GENERATOR = "exfm-synthetic/2"
"""Written into dataset.json; a dataset by another generator version is not reused."""
IMPRESSIONS_PER_USER = 300
"""Default users: every user ever seen gets this many impressions on average over the stream."""


class SyntheticConfig(BaseModel):
    """Parameters of the synthetic stream. Equal configs give byte-identical data."""

    model_config = ConfigDict(extra="forbid")

    windows: int = Field(default=12, ge=1)
    rows_per_window: int = Field(default=20_000, ge=1)
    verticals: int | list[str] = Field(default=4, description="How many, or their names.")
    seed: int = 0
    # population
    users: int | None = Field(
        default=None,
        ge=1,
        description=f"Users alive at window 0 (default: {IMPRESSIONS_PER_USER} impressions per user "
        "over the stream, newborns included).",
    )
    user_activity_sigma: float = Field(
        default=1.0, ge=0, description="Log-normal sigma of per-user activity (heavy-tailed users)."
    )
    interests: int = Field(default=4, ge=1, description="Most interest vectors a user has (1..interests).")
    ads_per_vertical: int = Field(default=1500, ge=1, description="Ads alive per vertical at a time.")
    ad_zipf: float = Field(default=1.1, ge=0, description="Zipf exponent of ad popularity by rank.")
    advertisers: int = Field(default=400, ge=1)
    categories: int = Field(default=48, ge=2)
    category_clusters: int = Field(default=8, ge=1, description="Categories form this many clusters.")
    user_churn: float = Field(
        default=0.03, ge=0, lt=1, description="Fraction of users born/retiring per window."
    )
    ad_churn: float = Field(default=0.1, ge=0, lt=1, description="Fraction of ads born/retiring per window.")
    # truth
    latent_dim: int = Field(default=16, ge=1, description="Width K of user interests and ad factors.")
    interaction_scale: float = Field(default=1.2, ge=0, description="Weight s of the user x ad affinity.")
    context_cross: float = Field(
        default=0.6, ge=0, description="Weight g of the (device, daypart) modulation: user x ad x context."
    )
    base_ctr: float = Field(default=0.05, gt=0, lt=1, description="Window-0 CTR.")
    label_noise: float = Field(
        default=0.5, ge=0, description="Std of unobserved per-row logit noise (integrated into the truth)."
    )
    # traffic
    vertical_skew: float = Field(
        default=0.6, gt=0, le=1, description="Traffic share ratio between consecutive verticals."
    )
    vertical_share: dict[str, float] = Field(
        default_factory=dict,
        description="Fixed traffic shares of named verticals (e.g. {'shop': 0.05}); the others split "
        "the rest by vertical_skew.",
    )
    # drift
    drift: bool = Field(default=True, description="Drift over windows (global, vertical, cluster, weekly).")
    drift_strength: float = Field(default=0.15, ge=0, description="Std of the per-window drift step (logit).")
    drift_global: float = Field(default=0.4, ge=0, le=1, description="Share of drift variance: global level.")
    drift_vertical: float = Field(default=0.3, ge=0, le=1, description="Share: per-vertical level.")
    drift_cluster: float = Field(default=0.3, ge=0, le=1, description="Share: per category cluster.")
    drift_persistence: float = Field(default=0.9, ge=0, le=1, description="AR(1) coefficient of the walks.")
    weekly_amplitude: float = Field(default=0.1, ge=0, description="Day-of-week swing of the level (logit).")
    history_decay: float = Field(default=0.8, gt=0, le=1, description="Per-window decay of history counters.")
    # encoding
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

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticConfig:
        total = self.drift_global + self.drift_vertical + self.drift_cluster
        if abs(total - 1) > 1e-6:
            raise ValueError(
                f"drift_global + drift_vertical + drift_cluster = {total:g}; the drift shares must sum to 1"
            )
        names = self.vertical_names
        unknown = sorted(set(self.vertical_share) - set(names))
        if unknown:
            raise ValueError(f"vertical_share names unknown verticals {unknown}; verticals are {names}")
        if any(not 0 < s < 1 for s in self.vertical_share.values()):
            raise ValueError("vertical_share values must be in (0, 1)")
        fixed = sum(self.vertical_share.values())
        if len(self.vertical_share) == len(names) and abs(fixed - 1) > 1e-6:
            raise ValueError(f"vertical_share names every vertical but sums to {fixed:g}, not 1")
        if len(self.vertical_share) < len(names) and fixed >= 1:
            raise ValueError(f"vertical_share sums to {fixed:g}: leave traffic for the unnamed verticals")
        return self

    @property
    def vertical_names(self) -> list[str]:
        if isinstance(self.verticals, list):
            return list(self.verticals)
        return [VERTICAL_NAMES[i] if i < len(VERTICAL_NAMES) else f"v{i}" for i in range(self.verticals)]

    @property
    def initial_users(self) -> int:
        if self.users:
            return self.users
        rows = self.windows * self.rows_per_window
        return max(100, round(rows / IMPRESSIONS_PER_USER / (1 + self.user_churn * (self.windows - 1))))

    @property
    def total_users(self) -> int:
        return total_users(self)

    @property
    def total_ads(self) -> int:
        return total_ads(self)

    def vertical_shares(self) -> np.ndarray:
        """Traffic share of each vertical (in ``vertical_names`` order), summing to 1."""
        names = self.vertical_names
        raw = self.vertical_skew ** np.arange(len(names), dtype=np.float64)
        free = np.array([n not in self.vertical_share for n in names])
        out = np.zeros(len(names))
        if free.any():
            out[free] = raw[free] / raw[free].sum() * (1 - sum(self.vertical_share.values()))
        for i, n in enumerate(names):
            out[i] = self.vertical_share.get(n, out[i])
        return out / out.sum()


HISTORY_DENSE = (
    "user_past_impressions",
    "user_ctr_lift",
    "user_cat_impressions",
    "user_cat_lift",
    "user_xv_lift",
    "ad_past_impressions",
    "ad_ctr_lift",
)
"""Decayed counters of earlier windows' impressions and clicks: the FM's expensive history features.
``*_impressions`` are decayed averages per window (no growth while the history fills up).
``*_lift`` are log ratios of smoothed CTRs: the user's, the user's in the row's category (over the
user's own CTR), the user's in the *other* verticals, the ad's (the others over the global CTR)."""
DENSE = ("user_age", "ad_age", *HISTORY_DENSE)
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
HISTORY_SPARSE = ("user_hist_categories",)
IDENTITY_MAX = 1000
"""Columns with at most this many ids get their own row per id (no hash collisions)."""


def _buckets(cardinality: int, cfg: SyntheticConfig) -> int:
    b = max(8, 4 * cardinality)
    return min(b, cfg.max_hash_buckets) if cfg.max_hash_buckets else b


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
                multi_valued=name in HISTORY_SPARSE,
                **encoding,
            )
        )
    return FeatureSchema(
        label="label", dense=list(DENSE), sparse=sparse, vertical="vertical", timestamp="timestamp"
    )


def student_features(config: SyntheticConfig | None = None) -> list[str]:
    """Feature columns a budget-limited student may use by default: ids, context and ages.

    Excluded: the history counters and cross-vertical aggregates (``HISTORY_DENSE``,
    ``user_hist_categories``), which a served model cannot afford, and ``vertical`` (constant
    within one vertical's model). The FM uses every feature of :func:`synthetic_schema`.
    """
    excluded = {*HISTORY_DENSE, *HISTORY_SPARSE, "vertical"}
    return [c for c in (*DENSE, *SPARSE) if c not in excluded]


def window_table(config: SyntheticConfig, data: WindowData) -> pa.Table:
    """A generated window as the Arrow table written to storage (no true probabilities)."""
    c = data.columns
    names = np.array(config.vertical_names, dtype=object)
    hist = pa.ListArray.from_arrays(pa.array(c["hist_offsets"]), pa.array(c["hist_values"]))
    cols = {
        "label": pa.array(data.label),
        **{d: pa.array(c[d]) for d in DENSE},
        **{s: pa.array(c[s]) for s in SPARSE if s not in ("user_hist_categories", "vertical")},
    }
    cols["user_hist_categories"] = hist
    cols["vertical"] = pa.array(names[c["vert"]], type=pa.string())
    cols["timestamp"] = pa.array(c["timestamp"], type=pa.int64())
    ordered = ["label", *DENSE, *SPARSE, "timestamp"]
    return pa.table({k: cols[k] for k in ordered})


def generate_window(config: SyntheticConfig, window: int) -> tuple[pa.Table, np.ndarray]:
    """One window as an Arrow table (not written) and each row's true click probability.

    Simulates windows ``0..window`` (history features need the earlier labels). The probabilities
    are for analysis (oracle metrics, tests); they are never written.
    """
    if not 0 <= window < config.windows:
        raise ValueError(f"window {window} is outside the stream's 0..{config.windows - 1}")
    *_, data = stream(config, until=window)
    return window_table(config, data), data.prob


def _entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def normalized_entropy(p: np.ndarray, y: np.ndarray) -> float | None:
    """Log loss of ``p`` over the entropy of the labels' base rate; None with one class only."""
    base = float(np.mean(y)) if len(y) else 0.0
    if base <= 0 or base >= 1:
        return None
    q = np.clip(p, 1e-7, 1 - 1e-7)
    loss = -float(np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    return loss / _entropy(base)


def window_truth(config: SyntheticConfig, data: WindowData) -> dict[str, dict[str, float | None]]:
    """Per vertical (and ``all``): rows, CTR, mean true probability and the Bayes NE of one window."""
    out: dict[str, dict[str, float | None]] = {}
    groups = {name: data.columns["vert"] == i for i, name in enumerate(config.vertical_names)}
    groups["all"] = np.ones(len(data.label), dtype=bool)
    for name, m in groups.items():
        y = data.label[m].astype(np.float64)
        out[name] = {
            "rows": int(m.sum()),
            "ctr": float(y.mean()) if m.any() else None,
            "true_ctr": float(data.prob[m].mean()) if m.any() else None,
            "bayes_ne": normalized_entropy(data.prob[m], y),
        }
    return out


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

    ``dataset.json`` holds the config, the schema and, once every window is written, ``truth``:
    per window and vertical the rows, CTR, mean true probability and Bayes NE (:func:`bayes_ne`).
    Idempotent: windows already written by the same config and generator are kept (the stream is
    still simulated from window 0: history features need the earlier labels). A dataset written
    by another config raises DataError unless ``overwrite``.
    """
    storage = as_storage(uri)
    schema = synthetic_schema(config)
    info = {
        "generator": GENERATOR,
        "config": config.model_dump(mode="json"),
        "schema": schema.model_dump(mode="json"),
    }
    existing = read_dataset_info(storage)
    same = existing is not None and all(existing.get(k) == info[k] for k in ("generator", "config"))
    if existing is not None and not same:
        if not overwrite:
            raise DataError(
                f"{storage.root_uri} already holds a dataset written by another config; pick a new "
                "root, or pass overwrite=True (--overwrite) to replace it"
            )
        for name in storage.list_dirs(""):
            if name.startswith("window="):
                storage.delete_prefix(name + "/")
    write_dataset_info(storage, info)
    truth: dict[str, dict] = {}
    for data in stream(config):
        w = data.window
        truth[str(w)] = window_truth(config, data)
        if same and is_window_ready(storage, w):
            continue
        table = window_table(config, data)
        write_window(storage, w, table, rows_per_file=rows_per_file or config.rows_per_window, overwrite=True)
    write_dataset_info(storage, {**info, "truth": truth})
    return _ref(uri, schema)


def bayes_ne(dataset_uri: str | os.PathLike[str] | Storage) -> dict[int, dict[str, float | None]]:
    """``{window: {vertical: Bayes NE}}`` of a synthetic dataset (NE of the true probabilities on
    the written labels; None where a vertical has one class only), from its ``dataset.json``."""
    info = read_dataset_info(dataset_uri)
    truth = (info or {}).get("truth")
    if truth is None:
        raise DataError(
            f"{dataset_uri}: dataset.json holds no `truth` (not a finished synthetic dataset of "
            f"generator {GENERATOR}); regenerate it with exfm_trainer.data.synthetic.generate"
        )
    return {
        int(w): {v: t["bayes_ne"] for v, t in per.items() if v != "all"}
        for w, per in sorted(truth.items(), key=lambda kv: int(kv[0]))
    }
