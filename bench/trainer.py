"""Training-step throughput: the ExFM trainer vs a raw FBGEMM TBE + the same dense layers.

Both sides train on the same in-memory batches (no I/O): the trainer's own step
(``StreamingTrainer._train``: torchrec fused EBC, model forward, loss, Adam) against a hand-written
loop over ``SplitTableBatchedEmbeddingBagsCodegen`` (rowwise Adagrad, CPU) feeding identical dense
layers. Reports samples/s and the ratio trainer/raw (goal >= 0.9).

    python bench/trainer.py [--quick] [--json OUT] [--md OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    OptimType,
    SplitTableBatchedEmbeddingBagsCodegen,
)
from torchrec import KeyedJaggedTensor

from exfm_trainer.data.batches import Batch
from exfm_trainer.jobs import DatasetRef, parse_job
from exfm_trainer.models.fm import FoundationModel
from exfm_trainer.models.layers import grad_scale
from exfm_trainer.models.losses import bce, distillation_target
from exfm_trainer.models.vm import VerticalModel
from exfm_trainer.schema import FeatureSchema, SparseFeature
from exfm_trainer.train.loop import StreamingTrainer


def make_batches(schema: FeatureSchema, n: int, batch_size: int, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        values = torch.cat(
            [torch.randint(0, f.hash_buckets, (batch_size,), generator=g) for f in schema.sparse]
        )
        kjt = KeyedJaggedTensor(
            keys=schema.sparse_names,
            values=values,
            lengths=torch.ones(len(schema.sparse) * batch_size, dtype=torch.int32),
        )
        out.append(
            Batch(
                dense=torch.randn(batch_size, len(schema.dense), generator=g),
                sparse=kjt,
                labels=(torch.rand(batch_size, generator=g) < 0.25).float(),
                fm_logit=torch.randn(batch_size, generator=g),
            )
        )
    return out


def _job(kind: str, schema: FeatureSchema, root: str, preset: str, batch_size: int) -> Any:
    ds = DatasetRef(uri=f"{root}/data", schema=schema).model_dump(mode="json", by_alias=True)
    cfg: dict[str, Any] = {
        "job": f"{kind}-train",
        "storage": f"{root}/store",
        "name": "bench",
        "dataset": ds,
        "preset": preset,
        "batch_size": batch_size,
        "device": "cpu",
    }
    if kind == "vm":
        cfg["distillation"] = {"mode": "aux", "beta": 0.5}
    return parse_job(cfg)


def _timed(step, batches: list[Batch], warmup: int) -> float:  # type: ignore[no-untyped-def]
    step(batches[:warmup])
    start = time.perf_counter()
    step(batches[warmup:])
    return sum(len(b) for b in batches[warmup:]) / (time.perf_counter() - start)


def raw_step_fn(model: FoundationModel | VerticalModel, lr: float, dense_lr: float, beta: float):  # type: ignore[no-untyped-def]
    """A hand-written loop: one TBE for all tables + the model's dense layers, no torchrec."""
    specs = [
        (f.hash_buckets, model.preset.embedding_dim, EmbeddingLocation.HOST, ComputeDevice.CPU)
        for f in model.schema.sparse
    ]
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=specs,
        optimizer=OptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=lr,
        pooling_mode=PoolingMode.SUM,
    )
    params = [p for n, p in model.named_parameters() if not n.startswith("sparse.")]
    opt = torch.optim.Adam(params, lr=dense_lr)

    def step(batches: list[Batch]) -> None:
        for b in batches:
            values, lengths = b.sparse.values(), b.sparse.lengths()
            offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
            x = torch.cat([model.dense_tower(b.dense), tbe(values.int(), offsets.int())], dim=1)
            if isinstance(model, FoundationModel):
                loss = bce(model.out(model.top(model.cross(x))).squeeze(-1), b.labels)
            else:
                h = model.backbone(x)
                serving = model.serving_head(h).squeeze(-1)
                aux = model.aux_head(grad_scale(h, beta)).squeeze(-1)
                loss = bce(serving, b.labels) + bce(aux, distillation_target(b.fm_logit, 1.0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def run(quick: bool) -> dict[str, Any]:
    n_sparse, buckets, batch_size = (8, 20_000, 1024) if quick else (26, 100_000, 2048)
    steps, warmup, rounds = (20, 3, 2) if quick else (60, 5, 3)
    schema = FeatureSchema(
        dense=[f"d{i}" for i in range(13)],
        sparse=[SparseFeature(name=f"c{i}", hash_buckets=buckets) for i in range(n_sparse)],
    )
    batches = make_batches(schema, steps + warmup, batch_size)
    results: dict[str, Any] = {
        "config": {
            "sparse_features": n_sparse,
            "hash_buckets": buckets,
            "batch_size": batch_size,
            "steps": steps,
            "threads": torch.get_num_threads(),
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory() as root:
        for kind, preset in (("fm", "small"), ("vm", "small")):
            job = _job(kind, schema, root, preset, batch_size)
            torch.manual_seed(0)
            trainer = StreamingTrainer(job, out=None)
            trainer_step = lambda bs, t=trainer: t._train([(b, True) for b in bs])  # noqa: E731
            torch.manual_seed(0)
            ref = (
                FoundationModel(schema, preset)
                if kind == "fm"
                else VerticalModel(schema, preset, job.distillation)
            )
            raw = raw_step_fn(ref, job.optim.embedding_lr, job.optim.dense_lr, 0.5)
            # alternate the two loops and keep each one's best run (the cores are shared)
            trainer_sps = raw_sps = 0.0
            for _ in range(rounds):
                trainer_sps = max(trainer_sps, _timed(trainer_step, batches, warmup))
                raw_sps = max(raw_sps, _timed(raw, batches, warmup))
            results["models"][f"{kind}-{preset}"] = {
                "trainer_samples_per_s": round(trainer_sps),
                "raw_tbe_samples_per_s": round(raw_sps),
                "ratio": round(trainer_sps / raw_sps, 3),
            }
    return results


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        "# Trainer step vs raw FBGEMM TBE (CPU)",
        "",
        f"{cfg['sparse_features']} sparse features x {cfg['hash_buckets']} rows, batch {cfg['batch_size']}, "
        f"{cfg['steps']} timed steps, {cfg['threads']} threads; goal: ratio >= 0.9.",
        "",
        "| model | trainer samples/s | raw TBE samples/s | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results["models"].items():
        lines.append(
            f"| {name} | {r['trainer_samples_per_s']} | {r['raw_tbe_samples_per_s']} | {r['ratio']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small tables and few steps (< 1 min)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--md", type=Path, help="write a markdown table here")
    args = parser.parse_args()
    results = run(args.quick)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.md:
        args.md.write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
