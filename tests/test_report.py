"""What the reports write beside the figures: each policy on one line (run-length for long networks) and its
saving against the baseline a constraint names."""

from __future__ import annotations

from types import SimpleNamespace

from picojoule.graph import build_graph
from picojoule.policy import LayerPolicy, Policy
from picojoule.search.config import config_from_dict
from picojoule.search.report import compact_policy, saving


def test_a_policy_on_one_line_in_graph_order() -> None:
    graph = build_graph("resnet20")
    names = [layer.name for layer in graph.compute_layers()]
    assert len(names) == 20
    policy = Policy(LayerPolicy(4, 8), {names[0]: LayerPolicy(8, 8), names[-1]: LayerPolicy(8, 8),
                                        names[7]: LayerPolicy(4, 6, 0.5, 0, 0.5, "2:4"),
                                        names[8]: LayerPolicy(3, 8, 1.0, 0, 0.25)})
    assert compact_policy(policy, graph) == ("W 8/4×7/3/4×10/8 A 8×7/6/8×12 keep 1×7/.5/1×12 "
                                             "sparsity 0×7/2:4/.25/0×11")
    assert compact_policy(Policy(), graph) == "W f×20 A f×20 keep 1×20"  # float32: f
    digits = build_graph("digits")
    assert compact_policy(Policy(LayerPolicy(8, 8), {"conv3": LayerPolicy(4, 6, 0.75, 8)}), digits) == \
        "W 8/8/4/8 A 8/8/6/8 keep 1/1/.75/1 rank -/-/8/-"


def test_the_saving_names_the_constraints_baseline() -> None:
    cfg = config_from_dict({"target": "eyeriss", "objectives": ["minimise energy", "minimise latency"],
                            "constraints": ["energy <= 0.5 * uniform_int8", "latency <= 0.9 * fp32"]})
    result = SimpleNamespace(problem=SimpleNamespace(program=cfg.program, objectives=cfg.objective_list),
                             baselines={"uniform_int8": {"energy": 4.0, "latency": 2.0}, "fp32": {"latency": 4.0}})
    record = SimpleNamespace(metrics={"energy": 1.44, "latency": 1.0})
    assert saving(result, record) == "0.36x uniform_int8 energy, 0.25x fp32 latency"
    result.problem.program = config_from_dict({"target": "eyeriss", "objectives": ["minimise energy"]}).program
    assert saving(result, record) == "0.36x uniform_int8 energy, 0.50x uniform_int8 latency"  # against int8
