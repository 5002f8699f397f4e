"""The LLM recipe for linear layers (``evaluation.linear_quant``): GPTQ, group-wise scales, per-token activations
and a Walsh-Hadamard rotation, applied to a policy's bits through ``pj.compress`` and the search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import picojoule as pj
from picojoule.errors import PicojouleError
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.scales import ScaleFormat
from picojoule.spaces.linear_ptq import LinearQuant, RecipeLinear, TokenQuantizer, hadamard
from picojoule.spaces.quantize import QuantLinear


def _mlp_and_inputs() -> tuple[nn.Module, torch.Tensor]:
    """A two-layer MLP whose inputs carry a few outlier channels, as a transformer's LayerNorm outputs do."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 64)).eval()
    x = torch.randn(512, 128)
    x[:, :3] *= 25.0
    return model, x


def _error(model: nn.Module, compressed: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model(x)
        return float(((compressed(x) - ref) ** 2).mean() / (ref**2).mean())


def test_hadamard_is_orthonormal_and_a_rotated_float_layer_computes_the_same() -> None:
    for n in (2, 16, 128):
        h = hadamard(n)
        assert torch.allclose(h @ h.T, torch.eye(n), atol=1e-5)
    lin = nn.Linear(256, 32)
    blocks = torch.block_diag(*[hadamard(128)] * 2)
    rotated = RecipeLinear(lin.weight.detach() @ blocks.T, lin.bias, "fc", None, None, "token", None, 128)
    x = torch.randn(4, 7, 256)
    with torch.no_grad():
        assert torch.allclose(rotated(x), lin(x), atol=1e-4)


def test_token_quantizer_gives_each_token_its_own_grid() -> None:
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 100.0, 200.0, 300.0]])
    q = TokenQuantizer(2)(x)
    assert torch.allclose(q, x)  # 4 levels per row: each row lands on its own grid exactly
    assert TokenQuantizer(2)(torch.tensor([[0.0, 1.0, 2.0, 300.0]]))[0, 1] == 0.0  # one row, one range


def test_token_quantizer_groups_and_clip() -> None:
    """``group``: one range per group of a token's inputs (Atom); ``clip``: a fraction of each range."""
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.0, 100.0, 200.0, 300.0]])
    assert torch.allclose(TokenQuantizer(2, group=4)(x), x)  # each half of the token on its own grid
    assert TokenQuantizer(2)(x)[0, 1] == 0.0  # one range for the token: the small half rounds away
    assert torch.allclose(TokenQuantizer(2, group=3)(x), TokenQuantizer(2)(x))  # 8 inputs: no groups of 3
    clipped = TokenQuantizer(8, clip=0.5)(torch.tensor([[-4.0, -1.0, 1.0, 4.0]]))  # range [-2, 2], step 4/255
    assert clipped.abs().max() <= 2.0 + 4 / 255 and abs(float(clipped[0, 2]) - 1.0) < 0.02
    model, x = _mlp_and_inputs()
    policy = pj.Space(pj.LayerGraph.from_torch(model, x[:1]), "a100", {"pin_first_last": False}).uniform_policy(4, 4)
    err = {g: _error(model, pj.compress(model, x[:1], policy, calib_data=[x[:256]],
                                        linear_quant={"rotate": True, "act_group": g}), x[256:]) for g in (None, 32)}
    assert err[32] < 0.8 * err[None]  # finer activation ranges: a smaller error at W4A4


def test_recipe_beats_the_generic_pass_at_w4a4_and_keeps_sparsity() -> None:
    model, x = _mlp_and_inputs()
    graph = pj.LayerGraph.from_torch(model, x[:1])
    space = pj.Space(graph, "a100", {"pin_first_last": False, "defaults": {"w_bits": [4, 8], "a_bits": [4, 8]}})
    policy = space.uniform_policy(4, 4)
    calib = [x[:256]]
    generic = _error(model, pj.compress(model, x[:1], policy, calib_data=calib), x[256:])
    token = pj.compress(model, x[:1], policy, calib_data=calib, linear_quant={"rotate": False})
    rotated = pj.compress(model, x[:1], policy, calib_data=calib, linear_quant=LinearQuant(rotate=True))
    assert all(isinstance(m, RecipeLinear) for m in (rotated[0], rotated[2]))
    assert not any(isinstance(m, QuantLinear) for m in rotated.modules())
    assert rotated[0].block == 128 and rotated[2].block == 128
    e_token, e_rot = _error(model, token, x[256:]), _error(model, rotated, x[256:])
    assert e_rot < 0.5 * generic and e_rot < e_token, (generic, e_token, e_rot)
    for layer in (rotated[0], rotated[2]):  # 4-bit groups of 128 inputs: at most 16 values per group
        groups = layer.weight.detach().reshape(-1, 128)
        assert max(g.unique().numel() for g in groups) <= 16
    assert torch.equal(model[0].weight, model[0].weight)  # untouched original
    sparse = pj.Policy.from_dict({"default": {"w_bits": 4, "a_bits": 4, "sparsity": 0.5}})
    out = pj.compress(model, x[:1], sparse, calib_data=calib, linear_quant={"rotate": True})
    for layer in (out[0], out[2]):
        assert layer.block == 1  # a rotation would make the sparse weight dense
        assert float((layer.weight == 0).float().mean()) >= 0.5


def test_recipe_config_errors_name_the_field() -> None:
    model, x = _mlp_and_inputs()
    policy = pj.Policy.from_dict({"default": {"w_bits": 4, "a_bits": 8}})
    with pytest.raises(PicojouleError, match=r"linear_quant.group_size.*power of two") as e:
        pj.compress(model, x[:1], policy, calib_data=[x], linear_quant={"group_size": 96})
    assert "\n" not in str(e.value)
    with pytest.raises(PicojouleError, match=r"linear_quant.weights"):
        pj.compress(model, x[:1], policy, calib_data=[x], linear_quant={"weights": "awq"})
    with pytest.raises(PicojouleError, match=r"calib_data.*linear_quant"):
        pj.compress(model, x[:1], pj.Policy.from_dict({"default": {"w_bits": 4}}), linear_quant={})
    with pytest.raises(PicojouleError, match=r"field 'activations'"):
        LinearQuant(activations="channel")  # type: ignore[arg-type]
    with pytest.raises(PicojouleError, match=r"field 'act_group'"):
        LinearQuant(act_group=48)
    with pytest.raises(PicojouleError, match=r"linear_quant.act_clip"):
        pj.compress(model, x[:1], policy, calib_data=[x], linear_quant={"act_clip": 1.5})


def test_search_measures_what_compress_gives_under_the_recipe() -> None:
    """The search's evaluation applies the recipe: a trial's score is the score of pj.compress with the same
    recipe, and differs from the generic pass's."""
    model, x = _mlp_and_inputs()
    with torch.no_grad():
        ref = model(x[256:])

    def fidelity(m: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(m(x[256:]), ref, dim=-1).mean())

    recipe = {"weights": "gptq", "group_size": 64, "rotate": True}
    space = {"pin_first_last": False, "defaults": {"w_bits": [4, 8], "a_bits": [4, 8], "keep": [1.0]}}
    res = pj.search(model, x[:1], "a100", evaluate=fidelity, calib_data=[x[:256]], constraints=["latency <= 2 * fp16"],
                    trials=3, strategy="random", space=space, warm_start=["uniform_w4a4"], progress=False,
                    evaluation={"linear_quant": recipe})
    record = next(r for r in res.records if r.evaluated and r.warm_start == "uniform_w4a4")
    policy = res.policy(record)
    ours = fidelity(pj.compress(model, x[:1], policy, calib_data=[x[:256]], linear_quant=recipe).eval())
    generic = fidelity(pj.compress(model, x[:1], policy, calib_data=[x[:256]]).eval())
    assert record.metrics["accuracy"] == pytest.approx(ours, abs=1e-6)
    assert ours > generic
    # the search prices what the recipe deploys: its group scales, rescales, ranges and rotation
    fmt = res.problem.scales
    assert fmt == ScaleFormat(64, True, None, 128)
    priced = price(res.problem.graph, "a100", policy, scales=fmt).total_latency_s[0]
    assert record.metrics["latency"] == pytest.approx(priced)
    assert priced > price(res.problem.graph, "a100", policy).total_latency_s[0]
    assert np.isfinite(ours)


def test_a_saved_recipe_model_loads_into_its_shells() -> None:
    """A fine-tuned winner's weights (a state dict of the recipe's layers) load into the structure that
    recipe_shells rebuilds without data, and compute the same."""
    from picojoule.models import load_state
    from picojoule.spaces.apply import apply_policy
    from picojoule.spaces.linear_ptq import recipe_shells

    model, x = _mlp_and_inputs()
    policy = pj.Policy.from_dict({"default": {"w_bits": 4, "a_bits": 8}, "layers": {"2": {"a_bits": 4}}})
    recipe = LinearQuant(rotate=True, smooth=0.5, activations="tensor")
    saved = pj.compress(model, x[:1], policy, calib_data=[x[:256]], linear_quant=recipe)
    shell, _ = apply_policy(model, x[:1], policy)
    assert recipe_shells(shell, recipe) == 2
    load_state(shell, saved.state_dict(), "saved")
    with torch.no_grad():
        assert torch.allclose(shell.eval()(x[256:]), saved(x[256:]), atol=1e-5)


def test_metric_sensitivity_guides_the_ilp_without_labels(tmp_path) -> None:
    """A model without labels: the sensitivity is the drop of the user's metric per knob (here output cosine),
    cached, and the ILP searches from it."""
    from picojoule.sensitivity import metric_sensitivity

    model, x = _mlp_and_inputs()
    with torch.no_grad():
        ref = model(x[256:384])

    def fidelity(m: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(m(x[256:384]), ref, dim=-1).mean())

    graph = pj.LayerGraph.from_torch(model, x[:1])
    overrides = {"pin_first_last": False, "defaults": {"w_bits": [2, 8], "a_bits": [8], "keep": [1.0]}}
    space = pj.Space(graph, "a100", overrides)
    recipe = LinearQuant(rotate=True)
    sens = metric_sensitivity(model, x[:1], space, fidelity, [x[:256]], linear_quant=recipe, data_key="x[256:384]",
                              cache_dir=tmp_path, progress=False)
    knobs = {(k.name, c) for k in space.knobs for c in k.choices}
    assert {(r["knob"], r["choice"]) for r in sens.table} == knobs
    for layer in ("0", "2"):
        assert sens.loss(layer, "w_bits", 2) > sens.loss(layer, "w_bits", 8) + 1e-4  # 2-bit weights cost more
        assert abs(sens.loss(layer, "w_bits", 8)) < 1e-2
    again = metric_sensitivity(model, x[:1], space, fidelity, [x[:256]], linear_quant=recipe, data_key="x[256:384]",
                               cache_dir=tmp_path, progress=False)
    assert again.cached and again.table == sens.table
    other = metric_sensitivity(model, x[:1], space, fidelity, [x[:256]], data_key="x[256:384]", cache_dir=tmp_path,
                               progress=False)
    assert not other.cached  # another recipe: measured again
    res = pj.search(model, x[:1], "a100", evaluate=fidelity, calib_data=[x[:256]], constraints=["latency <= 2 * fp16"],
                    trials=3, strategy="ilp", space=overrides, sensitivity=sens, progress=False,
                    evaluation={"linear_quant": {"rotate": True}})
    assert any(r.evaluated for r in res.records) and res.front
