"""The GPT-2-shaped decoder of the zoo: prefill and decode priced apart, the KV cache in decode's traffic."""

from __future__ import annotations

import collections

import pytest

import picojoule as pj
from picojoule.zoo import build_model

H, LAYERS, VOCAB, FF = 768, 12, 50257, 3072


@pytest.fixture(scope="module")
def graphs() -> dict[str, pj.LayerGraph]:
    return {name: pj.LayerGraph.from_torch(*build_model(name)) for name in ("gpt2_prefill", "gpt2_decode")}


def test_decode_counts_the_kv_cache(graphs: dict[str, pj.LayerGraph]) -> None:
    decode = graphs["gpt2_decode"]
    cached = 1023
    per_layer = 3 * H * H + H * H + 2 * H * FF + 2 * (cached + 1) * H  # QKV, proj, MLP, scores and x V
    assert decode.macs == LAYERS * per_layer + H * VOCAB
    scores = [layer for layer in decode.layers if layer.op == "matmul"]
    assert len(scores) == 2 * LAYERS
    assert scores[0].in_elems[1] == (cached + 1) * H  # q . K^T reads every cached key (and the new one)
    prefill = graphs["gpt2_prefill"]
    assert prefill.params == decode.params
    assert prefill.macs == 512 * (LAYERS * (12 * H * H) + H * VOCAB) + LAYERS * 2 * 512 * 512 * H


@pytest.mark.parametrize("target", ["a100", "h100"])
def test_decode_is_memory_bound_and_prefill_is_not(graphs: dict[str, pj.LayerGraph], target: str) -> None:
    fp16 = {"default": {"w_bits": 16, "a_bits": 16}}
    w4a16 = {"default": {"w_bits": 4, "a_bits": 16}}
    decode = pj.cost(graphs["gpt2_decode"], target, fp16)
    prefill = pj.cost(graphs["gpt2_prefill"], target, fp16)
    bound = lambda r: collections.Counter(row["bound"] == "compute" for row in r.layers if row["macs"])  # noqa: E731
    assert bound(decode)[True] == 0  # every MAC layer of a decode step waits on memory
    linears = [row for row in prefill.layers if row["op"] == "linear"]
    assert all(row["bound"] == "compute" for row in linears)  # 512 tokens make the projections compute-bound
    # W4A16 reads a quarter of the weights: decode gets faster, prefill does not
    assert pj.cost(graphs["gpt2_decode"], target, w4a16).total["latency_s"] < decode.total["latency_s"]
    assert pj.cost(graphs["gpt2_prefill"], target, w4a16).total["latency_s"] == pytest.approx(
        prefill.total["latency_s"], rel=0.02)
