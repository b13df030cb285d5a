"""Student adapter (Algorithm 1) and optimisation hygiene of the streaming trainer."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from trainer_data import make_dataset, vm_job

from exfm_trainer.data.batches import iter_batches
from exfm_trainer.jobs import Distillation, parse_job
from exfm_trainer.models.adapter import AdapterTrainer, StudentAdapter
from exfm_trainer.train.loop import StreamingTrainer


def test_adapter_starts_as_identity_and_reanchors() -> None:
    adapter = StudentAdapter(hidden=4)
    z = torch.linspace(-6, 3, 11)
    torch.testing.assert_close(adapter(z), z)
    adapter.anchor(mean=-3.0, std=2.0)
    torch.testing.assert_close(adapter(z), z)  # still the identity, whatever the anchor
    with torch.no_grad():
        adapter.bias.fill_(0.5)
    torch.testing.assert_close(adapter(z), z + 2.0 * 0.5)  # corrections are in units of the FM's spread


def test_adapter_target_is_computed_after_its_update() -> None:
    torch.manual_seed(0)
    cfg = Distillation(mode="aux", adapter=True, adapter_lr=0.1)
    trainer = AdapterTrainer(cfg)
    fm_logit = torch.randn(256)
    labels = torch.ones(256)  # the FM is too low: the adapter must raise its output
    before = copy.deepcopy(trainer.module)
    target = trainer.step(fm_logit, labels)
    after = trainer.target(fm_logit)
    torch.testing.assert_close(target, after)  # the target comes from the updated adapter
    assert float(target.mean()) > float(torch.sigmoid(before(fm_logit)).mean()) + 0.01
    assert not target.requires_grad


def test_adapter_weight_decay_pulls_toward_identity() -> None:
    """At z = 0 the labels carry no gradient for the slope: only the decay moves it, toward 0."""
    slopes = {}
    for decay in (0.0, 0.5):
        trainer = AdapterTrainer(Distillation(mode="aux", adapter=True, adapter_lr=0.05, adapter_decay=decay))
        with torch.no_grad():
            trainer.module.slope.fill_(1.0)
        for _ in range(50):
            trainer.step(torch.zeros(64), torch.full((64,), 0.5))
        slopes[decay] = float(trainer.module.slope)
    assert slopes[0.0] == 1.0 and slopes[0.5] < 0.5


def _vm_trainer(tmp_path: Path, **distillation: object) -> tuple[StreamingTrainer, list]:
    ds = make_dataset(tmp_path / "data", range(1), rows=120, fm=True)
    job = parse_job(
        vm_job(tmp_path, ds, distillation={"mode": "aux", **distillation}, optim={"warmup_steps": 0})
    )
    trainer = StreamingTrainer(job, out=None)
    batches = list(iter_batches(job.dataset, 0, 40, with_fm_logit=True))
    return trainer, batches


def test_padding_steps_never_move_optimizer_state(tmp_path: Path) -> None:
    trainer, batches = _vm_trainer(tmp_path, adapter=True)
    params = [p.detach().clone() for p in trainer.dense_params]
    adapter = [p.detach().clone() for p in trainer.adapter.module.parameters()]
    # this rank and every other rank have no real batch at these steps: nothing may change
    trainer._train([(b, False) for b in batches], batch_counts=[0, 0])
    assert trainer.dense_optim.state == {} and trainer.steps == 0
    for before, p in zip(params, trainer.dense_params, strict=True):
        torch.testing.assert_close(before, p.detach())
    for before, p in zip(adapter, trainer.adapter.module.parameters(), strict=True):
        torch.testing.assert_close(before, p.detach())
    trainer._train([(b, True) for b in batches], batch_counts=[len(batches)])
    assert trainer.steps == len(batches) and trainer.dense_optim.state


def test_gradient_clipping_and_warmup(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "data", range(1), rows=80)
    job = parse_job(
        vm_job(tmp_path, ds, distillation={"mode": "none"}, optim={"warmup_steps": 4, "clip_grad_norm": 1e-6})
    )
    trainer = StreamingTrainer(job, out=None)
    batch = next(iter_batches(job.dataset, 0, 80, with_fm_logit=False))
    before = [p.detach().clone() for p in trainer.dense_params]
    trainer._train([(batch, True)], batch_counts=[1])
    assert trainer.dense_optim.param_groups[0]["lr"] == trainer.dense_lr / 4  # first of 4 warm-up steps
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.dense_params]))
    assert float(grad_norm) <= 1e-6 * 1.01
    moved = [(p.detach() - b).abs().max() for p, b in zip(trainer.dense_params, before, strict=True)]
    assert max(float(m) for m in moved) > 0
