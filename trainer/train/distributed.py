"""Process-group setup, DMP wrapping, and gathering/loading full (unsharded) training state.

One process: tables are a ``FusedEmbeddingBagCollection``; no process group. Under torchrun
(``WORLD_SIZE > 1``): gloo on CPU / nccl on GPU, tables built on the meta device and sharded by
``DistributedModelParallel`` (fused TBE kernels, rowwise Adagrad applied in backward), dense
layers data-parallel. Checkpoints always hold full tensors, so any world size can resume them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


@dataclass
class DistContext:
    """This process's place in the job: rank, world size and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """``cuda:<local_rank>`` for ``cuda`` (or ``auto`` with a GPU visible), else ``cpu``."""
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError(
                "device 'cuda' was requested but no GPU is visible; use device 'cpu' or 'auto'"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_pref: str = "auto") -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; otherwise a one-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if world_size <= 1:
        return DistContext(0, 1, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group joined by :func:`init_distributed` (no-op in one process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedModelParallel`` over a model whose tables were built in "sharded" mode."""
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
    from torchrec.distributed.types import ShardingType

    # Small tables would be planned data-parallel with dense kernels (no fused optimizer):
    # shard every table table-/row-wise on the fused TBE kernel instead.
    tables = getattr(getattr(model, "sparse", None), "embedding_bag_configs", lambda: [])()
    constraints = {
        t.name: ParameterConstraints(
            sharding_types=[ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value],
            compute_kernels=[EmbeddingComputeKernel.FUSED.value],
        )
        for t in tables
    }
    planner = EmbeddingShardingPlanner(constraints=constraints, debug=False)
    plan = planner.collective_plan(model)
    return DistributedModelParallel(model, device=ctx.device, plan=plan)


def all_reduce_ints(values: list[int], ctx: DistContext, op: str = "sum") -> list[int]:
    """Element-wise ``sum`` (or ``max``) of ``values`` over all ranks."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return [int(v) for v in t.tolist()]


def all_reduce_floats(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def grad_averager(ctx: DistContext) -> Callable[[torch.Tensor], None] | None:
    """In place mean of a gradient over ranks (None in one process: nothing to average)."""
    if not ctx.distributed:
        return None

    def average(grad: torch.Tensor) -> None:
        dist.all_reduce(grad)
        grad.div_(ctx.world_size)

    return average


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` on every rank (a one-element list in one process)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in one process)."""
    if ctx.distributed:
        dist.barrier()


def _comm_device(ctx: DistContext) -> torch.device:
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")


def unwrap(model: nn.Module) -> nn.Module:
    """The user model inside a DMP wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    if isinstance(inner, nn.parallel.DistributedDataParallel):
        return inner.module
    return inner


# ---- embedding optimizer state: {table name: tensor}, whichever build holds the tables --------


def _table_of(param_key: str) -> str:
    """``t3`` from ``t3.weight`` / ``sparse.embedding_bags.t3.weight``."""
    parts = param_key.split(".")
    return parts[-2] if parts[-1] == "weight" else parts[-1]


def _embedding_optim_state(model: nn.Module) -> dict[str, Any]:
    """``{table: momentum (Tensor or ShardedTensor)}`` of the fused rowwise-Adagrad state."""
    if hasattr(model, "fused_optimizer"):  # DMP
        state = model.fused_optimizer.state_dict()["state"]
    else:
        sparse = getattr(unwrap(model), "sparse", None)
        if sparse is None or not hasattr(sparse, "fused_optimizer"):
            return {}
        state = sparse.fused_optimizer().state_dict()["state"]
    out: dict[str, Any] = {}
    for key, entry in state.items():
        for name, value in entry.items():
            if "momentum" in name:
                out[_table_of(key)] = value
    return out


def _local_pieces(value: Any) -> list[tuple[list[int], torch.Tensor]]:
    if isinstance(value, ShardedTensor):
        return [(list(s.metadata.shard_offsets), s.tensor) for s in value.local_shards()]
    return [([0] * value.dim(), value)]


def _slices(offsets: list[int], shape: torch.Size) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in zip(offsets, shape, strict=True))


def full_state(model: nn.Module, ctx: DistContext) -> dict[str, Any] | None:
    """``{"model": ..., "embedding_optim": ...}`` as full CPU tensors on rank 0 (None elsewhere).

    Collective under DMP: every rank must call it.
    """
    sd = model.state_dict()
    optim = _embedding_optim_state(model)
    if not ctx.distributed:
        return {
            "model": {k: v.detach().cpu().clone() for k, v in sd.items()},
            "embedding_optim": {k: v.detach().cpu().clone() for k, v in optim.items()},
        }
    sharded = {f"model/{k}": v for k, v in sd.items() if isinstance(v, ShardedTensor)}
    sharded.update({f"optim/{k}": v for k, v in optim.items()})
    local = {key: [(off, t.detach().cpu()) for off, t in _local_pieces(v)] for key, v in sharded.items()}
    shapes = {key: tuple(v.size()) for key, v in sharded.items()}
    gathered = gather_objects((local, shapes), ctx)
    if not ctx.is_main:
        return None
    all_shapes: dict[str, tuple[int, ...]] = {}
    for _, sh in gathered:
        all_shapes.update(sh)
    full: dict[str, torch.Tensor] = {}
    for key, shape in all_shapes.items():
        dtype = next(t.dtype for loc, _ in gathered for off, t in loc.get(key, []))
        full[key] = torch.zeros(shape, dtype=dtype)
    for loc, _ in gathered:
        for key, pieces in loc.items():
            for off, t in pieces:
                full[key][_slices(off, t.shape)] = t
    model_state = {
        k: (full[f"model/{k}"] if isinstance(v, ShardedTensor) else v.detach().cpu().clone())
        for k, v in sd.items()
    }
    optim_state = {k[len("optim/") :]: v for k, v in full.items() if k.startswith("optim/")}
    return {"model": model_state, "embedding_optim": optim_state}


def load_full_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Copy a :func:`full_state` into the (possibly sharded) model and its fused optimizer, in place."""
    current = model.state_dict()
    missing = sorted(set(current) - set(state["model"]))
    unexpected = sorted(set(state["model"]) - set(current))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}; "
            "was it written with another preset or feature schema?"
        )
    with torch.no_grad():
        for key, value in current.items():
            src = state["model"][key]
            for off, t in _local_pieces(value):
                t.copy_(src[_slices(off, t.shape)].to(t.device, t.dtype))
        saved = state.get("embedding_optim", {})
        for table, value in _embedding_optim_state(model).items():
            if table not in saved:
                continue
            for off, t in _local_pieces(value):
                t.copy_(saved[table][_slices(off, t.shape)].to(t.device, t.dtype))
