"""patch(model): transformers MoE blocks become moekit layers that compute exactly the same.

For every MoE family of the installed transformers (tiny random models built from config
classes), ``patch`` either replaces its blocks, after which logits, every gradient, router logits,
aux loss and greedy ``generate`` equal the unpatched model's, the parameters are the same objects
(same storage) under the same names and ``state_dict`` keys, and ``unpatch`` restores the
original modules; or it leaves them and says why, for exactly the families moekit's table lists as
unsupported. A patched model fine-tuned with moekit's balancing saves a checkpoint that vanilla
transformers loads to the same logits.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("needs transformers >= 5", allow_module_level=True)

from checks import assert_same, record, run, run_safely  # noqa: E402
from test_transformers_registered import UNBUILDABLE  # noqa: E402
from tiny_models import UNDECORATED, moe_families, tiny_model  # noqa: E402

import moekit.integrations.transformers as mt  # noqa: E402
from moekit.integrations.transformers import patching as patch_module  # noqa: E402
from moekit.integrations.transformers.families import SPECS, UNSUPPORTED  # noqa: E402
from moekit.layers import MoELayer, total_aux_loss, update_router_biases  # noqa: E402

FAMILIES = sorted(f for f in {*moe_families(), *UNDECORATED} if f not in UNBUILDABLE)
NOT_PATCHED = {u.family: set(u.blocks) for u in UNSUPPORTED}
PATCHABLE = {s.family for s in SPECS}


def ids_for(seed: int = 1, shape: tuple[int, int] = (2, 7)) -> torch.Tensor:
    return torch.randint(3, 90, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_is_exact_or_says_why(family: str) -> None:
    model = tiny_model(family)
    ids = ids_for()
    params = {n: (p, p.data_ptr()) for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    ref, router_logits = run_safely(model, ids)
    report = mt.patch(model)
    assert set(report.unsupported) <= NOT_PATCHED.get(family, set()), report
    assert all(len(why) > 20 for why in report.unsupported.values())
    if family not in PATCHABLE:
        assert not report.patched and report.unsupported, report
        record(family, "patch", "unsupported: " + "; ".join(report.unsupported.values()))
        return
    assert report.patched, report
    layers = [m for m in model.modules() if isinstance(m, mt.TransformersMoE)]
    assert len(layers) == sum(report.patched.values())
    assert list(model.state_dict()) == keys
    assert {n: (p, p.data_ptr()) for n, p in model.named_parameters()} == params
    got = run(model, ids, router_logits=router_logits)
    delta = assert_same(ref, got)
    record(family, "patch", f"{delta:.1e}")
    assert all(layer.stats is not None and int(layer.stats.tokens_per_expert.sum()) > 0
               for layer in layers)
    assert mt.unpatch(model) == len(layers)
    assert not any(isinstance(m, MoELayer) for m in model.modules())
    assert list(model.state_dict()) == keys
    assert {n: (p, p.data_ptr()) for n, p in model.named_parameters()} == params
    assert_same(ref, run(model, ids, router_logits=router_logits))


def test_patch_before_the_first_forward_still_records_router_logits() -> None:
    """transformers installs its router-logit hooks at the first forward: they find the gate."""
    fresh = tiny_model("qwen3_moe")
    twin = copy.deepcopy(fresh)
    mt.patch(fresh)
    ids = ids_for(5)
    a = fresh(input_ids=ids, output_router_logits=True)
    b = twin(input_ids=ids, output_router_logits=True)
    assert len(a.router_logits) == len(b.router_logits) == 2
    torch.testing.assert_close(a.aux_loss, b.aux_loss)


def test_input_jitter_in_training_draws_the_same_noise() -> None:
    model = tiny_model("mixtral", router_jitter_noise=0.2).train()
    twin = copy.deepcopy(model)
    mt.patch(model)
    ids = ids_for(6)
    torch.manual_seed(7)
    a = model(input_ids=ids).logits
    torch.manual_seed(7)
    b = twin(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _train(model: Any, opt: torch.optim.Optimizer, steps: int, *, balance: bool) -> None:
    for step in range(steps):
        ids = ids_for(10 + step, (2, 8))
        out = model(input_ids=ids, labels=ids)
        loss = out.loss + total_aux_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if balance:
            update_router_biases(model)


@pytest.mark.parametrize("family", ["qwen2_moe", "gpt_oss", "deepseek_v3", "dbrx", "llama4"])
def test_fine_tuned_patched_model_saves_a_checkpoint_vanilla_transformers_loads(family: str,
                                                                               tmp_path: Any) -> None:
    model = tiny_model(family).train()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # built before patching
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    report = mt.patch(model)
    assert report.patched
    _train(model, opt, 3, balance=False)
    _train(twin, twin_opt, 3, balance=False)
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")
    model.eval().save_pretrained(tmp_path)
    loaded = type(twin).from_pretrained(tmp_path).eval()
    assert not any(isinstance(m, MoELayer) for m in loaded.modules())
    ids = ids_for(3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_bias_balancing_moves_the_bias_transformers_saves(tmp_path: Any) -> None:
    model = tiny_model("deepseek_v3").train()
    report = mt.patch(model, bias_update_rate=0.05, aux_loss_weight=0.01, z_loss_weight=1e-3)
    assert report.patched and not report.notes
    gate = model.model.layers[0].mlp.gate
    before = gate.e_score_correction_bias.clone()
    _train(model, torch.optim.SGD(model.parameters(), lr=0.01), 2, balance=True)
    moved = gate.e_score_correction_bias
    assert not torch.equal(moved, before)  # two sign steps of 0.05 each: |change| <= 0.1
    assert torch.all((moved - before).abs() <= 0.1 + 1e-6)
    model.eval().save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.model.layers[0].mlp.gate.e_score_correction_bias, moved)


def test_bias_balancing_is_noted_for_blocks_without_a_choice_bias() -> None:
    report = mt.patch(tiny_model("qwen3_moe"), bias_update_rate=0.01)
    assert report.patched
    assert any("Qwen3MoeSparseMoeBlock have none" in n for n in report.notes)


def test_capacity_option_drops_slots_and_reports_them() -> None:
    model = tiny_model("mixtral")
    mt.patch(model, capacity_factor=0.5)
    model(input_ids=ids_for(8, (2, 16)))
    report = mt.routing_report(model)
    assert len(report.layers) == 2
    assert all(r.dropped_fraction > 0 for r in report.layers)


def test_routing_report_table_and_plot(tmp_path: Any) -> None:
    model = tiny_model("olmoe")
    mt.patch(model)
    model(input_ids=ids_for(9))
    report = mt.routing_report(model)
    assert [r.name for r in report.layers] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    for r in report.layers:
        assert abs(r.load.sum() - 1) < 1e-6 and int(r.tokens_per_expert.sum()) == 14 * 2
        assert 0 < r.entropy <= torch.log(torch.tensor(8.0)).item() + 1e-6
    text = report.table()
    assert "model.layers.1.mlp" in text and "entropy" in text
    path = report.plot(tmp_path / "load.png")
    assert path.exists() and path.stat().st_size > 1000


def test_patched_models_deep_copy_and_pickle(tmp_path: Any) -> None:
    model = tiny_model("deepseek_v3")
    mt.patch(model)
    twin = copy.deepcopy(model)
    gate = twin.model.layers[0].mlp.gate
    assert twin.model.layers[0].mlp.moekit_router.bias_from.owner is twin.model.layers[0].mlp
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    ids = ids_for(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
        torch.testing.assert_close(twin(input_ids=ids).logits, model(input_ids=ids).logits)
    assert gate.e_score_correction_bias.data_ptr() != \
        model.model.layers[0].mlp.gate.e_score_correction_bias.data_ptr()


def test_patch_is_idempotent_and_unpatch_of_an_unpatched_model_is_a_no_op() -> None:
    model = tiny_model("qwen3_moe")
    assert mt.patch(model).patched == {"Qwen3MoeSparseMoeBlock": 2}
    assert mt.patch(model).patched == {"Qwen3MoeSparseMoeBlock": 2}
    assert len([m for m in model.modules() if isinstance(m, mt.TransformersMoE)]) == 2
    assert mt.unpatch(model) == 2 and mt.unpatch(model) == 0


def test_a_block_that_differs_on_the_probe_is_left_unpatched(monkeypatch: Any) -> None:
    import dataclasses

    spec = patch_module._SPECS[("qwen3_moe", "Qwen3MoeSparseMoeBlock")]
    fields = {**dict(spec.router), "normalize": True, "weights_precision": "float32"}
    wrong = dataclasses.replace(spec, router=tuple(fields.items()))
    monkeypatch.setattr(patch_module, "_SPECS", {**patch_module._SPECS,
                                                 ("qwen3_moe", "Qwen3MoeSparseMoeBlock"): wrong})
    model = tiny_model("qwen3_moe")  # norm_topk_prob=False: the wrong spec renormalises
    assert model.config.norm_topk_prob is False
    report = mt.patch(model)
    assert not report.patched
    assert "differs from transformers' forward on a probe input" in report.unsupported[
        "Qwen3MoeSparseMoeBlock"]


def test_blocks_already_sharded_by_transformers_expert_parallelism_are_left_alone() -> None:
    model = tiny_model("qwen3_moe")
    for m in model.modules():
        if hasattr(m, "_is_expert_parallel"):
            m._is_expert_parallel = True
    report = mt.patch(model)
    assert not report.patched
    assert "expert parallelism already sharded" in report.unsupported["Qwen3MoeSparseMoeBlock"]


def test_unchecked_transformers_release_warns_and_verifies(monkeypatch: Any) -> None:
    monkeypatch.setattr(patch_module, "is_checked", lambda version: False)
    with pytest.warns(UserWarning, match="is not a release moekit's table of MoE blocks was checked"):
        report = mt.patch(tiny_model("qwen3_moe"), verify=False)
    assert report.patched and any("verifies every block" in n for n in report.notes)


def test_transformers_older_than_5_is_refused_with_the_fix(monkeypatch: Any) -> None:
    from moekit.integrations.transformers import _compat

    monkeypatch.setattr(_compat, "transformers_version", lambda: "4.57.1")
    with pytest.raises(ImportError, match=r"needs transformers >= 5 .*found transformers 4\.57\.1"):
        _compat.require_transformers("patch")


def test_patched_layers_run_with_moekits_reference_backend() -> None:
    model = tiny_model("gpt_oss")
    ids = ids_for(4)
    ref = run(model, ids)
    mt.patch(model, backend="loop")
    assert all(m.backend == "loop" for m in model.modules() if isinstance(m, MoELayer))
    assert_same(ref, run(model, ids))


@pytest.mark.parametrize("backend", ["cpu", None])
def test_fused_cpu_backend_falls_back_for_transformers_layouts(backend: str | None) -> None:
    """The fused CPU path reads moekit's own layout: adopted tensors take the grouped matmuls."""
    model = tiny_model("gpt_oss")  # interleaved, transposed, biased, clamped SwiGLU
    ids = ids_for(11)
    ref = run(model, ids)
    mt.patch(model, backend=backend)  # type: ignore[arg-type]
    layers = [m for m in model.modules() if isinstance(m, mt.TransformersMoE)]
    assert all(not m.experts.native for m in layers)
    assert all(m.backend == ("cpu" if backend == "cpu" else "grouped_mm") for m in layers)
    assert_same(ref, run(model, ids))
