"""FM/VM models, losses, the aux gradient scale, the adapter's stop-gradient, and the serving export."""

from __future__ import annotations

import pytest
import torch
from torchrec import KeyedJaggedTensor
from trainer_data import SCHEMA

from exfm_trainer.jobs import Distillation
from exfm_trainer.models.export import export_serving, load_serving
from exfm_trainer.models.fm import FoundationModel
from exfm_trainer.models.losses import bce, distillation_target, vm_loss
from exfm_trainer.models.vm import VerticalModel
from exfm_trainer.storage.local import LocalStorage

B = 16


def _inputs(seed: int = 0) -> tuple[torch.Tensor, KeyedJaggedTensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tag_lengths = torch.randint(0, 4, (B,), generator=g)
    lengths = torch.cat([torch.ones(2 * B, dtype=torch.long), tag_lengths]).int()
    values = torch.cat(
        [
            torch.randint(0, 200, (B,), generator=g),
            torch.randint(0, 100, (B,), generator=g),
            torch.randint(0, 50, (int(tag_lengths.sum()),), generator=g),
        ]
    )
    kjt = KeyedJaggedTensor(keys=SCHEMA.sparse_names, values=values, lengths=lengths)
    dense = torch.randn(B, 2, generator=g)
    labels = torch.randint(0, 2, (B,), generator=g).float()
    fm_logit = torch.randn(B, generator=g)
    return dense, kjt, labels, fm_logit


@pytest.mark.parametrize("preset", ["tiny", "small", "medium"])
def test_fm_forward_backward_updates_fused_tables(preset: str) -> None:
    torch.manual_seed(0)
    model = FoundationModel(SCHEMA, preset)
    dense, kjt, labels, _ = _inputs()
    before = model.state_dict()["sparse.embedding_bags.t0.weight"].clone()
    logits = model(dense, kjt)
    assert logits.shape == (B,)
    bce(logits, labels).backward()
    # rowwise Adagrad runs inside the backward pass (fused TBE): touched rows moved already.
    after = model.state_dict()["sparse.embedding_bags.t0.weight"]
    touched = kjt["user"].values().unique()
    assert not torch.allclose(before[touched], after[touched])
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(before[untouched], after[untouched])
    assert model.top[0].weight.grad is not None


def test_larger_presets_have_more_parameters() -> None:
    sizes = [
        sum(p.numel() for n, p in FoundationModel(SCHEMA, name).named_parameters() if "sparse" not in n)
        for name in ("tiny", "small", "medium", "large")
    ]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def _aux_grad(beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    vm = VerticalModel(SCHEMA, "tiny", Distillation(mode="aux", beta=beta))
    dense, kjt, _, fm_logit = _inputs()
    out = vm(dense, kjt)
    bce(out.aux, distillation_target(fm_logit, 1.0)).backward()
    return vm.backbone[0].weight.grad.clone(), vm.aux_head[-1].weight.grad.clone()


def test_aux_gradient_scale_beta() -> None:
    g0, head0 = _aux_grad(0.0)
    g1, head1 = _aux_grad(1.0)
    g_half, _ = _aux_grad(0.5)
    assert torch.count_nonzero(g0) == 0, "beta=0 must block the aux gradient into the backbone"
    assert torch.count_nonzero(g1) > 0
    torch.testing.assert_close(g_half, 0.5 * g1)
    torch.testing.assert_close(head0, head1)  # the aux head itself always learns


def test_aux_forward_is_identity_whatever_beta() -> None:
    outs = []
    for beta in (0.0, 0.3, 1.0):
        torch.manual_seed(2)
        vm = VerticalModel(SCHEMA, "tiny", Distillation(mode="aux", beta=beta))
        outs.append(vm(*_inputs()[:2]).aux)
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(outs[0], outs[2])


def test_aux_head_is_a_configurable_tower() -> None:
    linear = VerticalModel(SCHEMA, "tiny", Distillation(mode="aux", aux_tower=[]))
    tower = VerticalModel(SCHEMA, "tiny", Distillation(mode="aux", aux_tower=[24, 8]))
    widths = [m.out_features for m in tower.aux_head.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [24, 8, 1]
    assert [m.out_features for m in linear.aux_head.modules() if isinstance(m, torch.nn.Linear)] == [1]


def test_adapter_target_mixes_with_fixed_total_weight() -> None:
    """FM and adapter targets share the distillation weight w: no doubling when the adapter is on."""
    dense, kjt, labels, fm_logit = _inputs()
    cfg = Distillation(mode="aux", alpha=2.0, weight=0.7, adapter=True, adapter_share=0.25)
    torch.manual_seed(3)
    vm = VerticalModel(SCHEMA, "tiny", cfg)
    out = vm(dense, kjt)
    p_sa = torch.sigmoid(fm_logit + 0.3)
    loss, parts = vm_loss(out, labels, fm_logit, cfg, adapter_prob=p_sa)
    t_fm = distillation_target(fm_logit, 2.0)
    t_sa = (2.0 * p_sa).clamp(max=1.0)
    expected = bce(out.serving, labels) + 0.7 * (0.75 * bce(out.aux, t_fm) + 0.25 * bce(out.aux, t_sa))
    torch.testing.assert_close(loss, expected)
    assert set(parts) == {"serving", "distill"}
    # when the adapter agrees with the FM, the loss is exactly the loss without the adapter
    same, _ = vm_loss(out, labels, fm_logit, cfg, adapter_prob=torch.sigmoid(fm_logit))
    torch.testing.assert_close(same, vm_loss(out, labels, fm_logit, cfg)[0])


def test_losses_per_mode() -> None:
    dense, kjt, labels, fm_logit = _inputs()
    target = distillation_target(fm_logit, 3.0)
    assert float(target.max()) <= 1.0 and float(target.max()) == 1.0  # alpha=3 clips at 1
    for mode in ("none", "kd", "aux"):
        cfg = Distillation(mode=mode, alpha=3.0, weight=0.7)
        torch.manual_seed(4)
        vm = VerticalModel(SCHEMA, "tiny", cfg)
        out = vm(dense, kjt)
        loss, _ = vm_loss(out, labels, fm_logit, cfg)
        expected = bce(out.serving, labels)
        if mode == "kd":
            expected = expected + 0.7 * bce(out.serving, target)
        if mode == "aux":
            expected = expected + 0.7 * bce(out.aux, target)
        torch.testing.assert_close(loss, expected)
        assert (out.aux is not None) == (mode == "aux")
    with pytest.raises(ValueError, match="fm_logit"):
        vm_loss(out, labels, None, Distillation(mode="aux"))


def test_serving_export_matches_serving_head_and_drops_aux_and_adapter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = Distillation(mode="aux", adapter=True)
    torch.manual_seed(5)
    vm = VerticalModel(SCHEMA, "tiny", cfg)
    dense, kjt, labels, fm_logit = _inputs()
    vm_loss(vm(dense, kjt), labels, fm_logit, cfg)[0].backward()  # train one step
    storage = LocalStorage(tmp_path)
    export_serving(vm, storage, "vm/default/v/serving/00000", {"version": "00000"})
    predictor = load_serving(storage, "vm/default/v/serving/00000")
    keys = list(predictor.module.state_dict())
    assert not [k for k in keys if "aux" in k or "adapter" in k], keys
    vm.eval()
    with torch.no_grad():
        expected = torch.sigmoid(vm(dense, kjt).serving)
    torch.testing.assert_close(predictor.predict(dense, kjt), expected)
    # key order of the KJT does not matter
    perm = kjt.permute([2, 0, 1])
    torch.testing.assert_close(predictor.predict(dense, perm), expected)
    assert predictor.schema == SCHEMA


def test_fused_and_plain_tables_agree_when_pooling_types_interleave() -> None:
    """Fused TBE groups tables by pooling; its pooled columns must still match the plain build."""
    from exfm_trainer.models.embeddings import build_embeddings
    from exfm_trainer.schema import FeatureSchema, SparseFeature

    schema = FeatureSchema(
        dense=["d0", "d1"],
        sparse=[
            SparseFeature(name="user", hash_buckets=200),
            SparseFeature(name="tags", hash_buckets=50, multi_valued=True),
            SparseFeature(name="item", hash_buckets=100),
        ],
    )
    g = torch.Generator().manual_seed(3)
    tag_lengths = torch.randint(1, 4, (B,), generator=g)
    kjt = KeyedJaggedTensor(
        keys=["user", "tags", "item"],
        values=torch.cat(
            [
                torch.randint(0, 200, (B,), generator=g),
                torch.randint(0, 50, (int(tag_lengths.sum()),), generator=g),
                torch.randint(0, 100, (B,), generator=g),
            ]
        ),
        lengths=torch.cat(
            [torch.ones(B, dtype=torch.long), tag_lengths, torch.ones(B, dtype=torch.long)]
        ).int(),
    )
    fused = build_embeddings(schema, 4, "fused")
    plain = build_embeddings(schema, 4, "plain")
    plain.load_state_dict(fused.state_dict())
    with torch.no_grad():
        got, want = fused(kjt).to_dict(), plain(kjt).to_dict()
    for name in ("user", "tags", "item"):
        torch.testing.assert_close(got[name], want[name])
    weight = fused.state_dict()["embedding_bags.t1.weight"]  # "tags": mean of its rows
    first = kjt["tags"].values()[: int(tag_lengths[0])]
    torch.testing.assert_close(got["tags"][0], weight[first].mean(0))
    # the whole FM agrees with its plain (DAS inference) rebuild
    torch.manual_seed(0)
    fm = FoundationModel(schema, "tiny").eval()
    fm_plain = FoundationModel(schema, "tiny", embedding_mode="plain").eval()
    fm_plain.load_state_dict(fm.state_dict())
    dense = torch.randn(B, 2, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(fm(dense, kjt), fm_plain(dense, kjt))
