"""The cost model of `cropi plan`: its CPU constants recomputed from the benchmarks they were
calibrated on, and its formulas against hand arithmetic."""

import json
import math
from pathlib import Path

import pytest

from cropi.config import load_config
from cropi.plan import ModelShape, parse_cluster
from cropi.plan import cost as C
from tests.test_plan import QWEN25_15B

RESULTS = Path("benchmarks/results")


def _scale_shape():
    from transformers import Qwen2Config

    # benchmarks/scale.py's model: random-init Qwen2, vocab 151936, hidden 128, 2 layers, tied
    return ModelShape.from_config(Qwen2Config(vocab_size=151936, hidden_size=128, intermediate_size=256,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              tie_word_embeddings=True))


def test_cpu_constants_match_the_benchmarks_they_come_from():
    p = _scale_shape().params
    inf = json.loads((RESULTS / "scale_influence.json").read_text())
    ms = [r["ms_per_token"] for r in inf["rows"] if r["mode"] == "influence"]
    influence_rate = 6 * p / (sorted(ms)[len(ms) // 2] / 1e3)  # forward + backward FLOPs per second
    tr = json.loads((RESULTS / "scale_trainer.json").read_text())
    ms = [r["ms_per_token"] for r in tr["rows"] if r["mode"] == "micro_batched"]
    trainer_rate = 10 * p / (sorted(ms)[len(ms) // 2] / 1e3)  # old + ref forwards, policy forward + backward
    assert C.CPU_FLOPS == pytest.approx(influence_rate, rel=0.35)
    assert C.CPU_FLOPS == pytest.approx(trainer_rate, rel=0.35)
    ro = json.loads((RESULTS / "rollout_throughput.json").read_text())
    assert C.CPU_DECODE_STEP_S == pytest.approx(C.MAX_NUM_SEQS / ro["vllm_one_engine_generation_only"]["tokens_per_s"],
                                                rel=0.35)
    sel = json.loads((RESULTS / "selection_pool_1m_exact.json").read_text())
    assert C.SELECT_S_PER_PROMPT_SET == pytest.approx(sel["runs"]["streamed"]["seconds"]
                                                      / (sel["n_prompts"] * sel["num_sets"]), rel=0.1)


@pytest.fixture
def qwen(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_15B))
    return tmp_path


def test_training_and_projection_terms_by_hand(qwen):
    cfg = load_config("configs/qwen2.5-1.5b-8gpu.yaml", [f"model.path={qwen}"])
    shape, cluster = ModelShape.of(str(qwen)), parse_cluster("1x8xH100-80GB")
    work = C.work_of(cfg, pool_size=15000)
    assert work.prompt_tokens == 128 and work.response_tokens == 512  # 0.5 x max_new_tokens 1024
    cost = C.estimate_cost(cfg, shape, cluster, work)
    # the DeepSpeed steps of a phase: 200 steps x 128 x 8 sequences x 640 tokens x 12 P (old + ref forwards,
    # policy forward + backward, the checkpointed recompute) over 6 ranks of 989 TFLOP/s at MFU 0.35
    step = 12 * shape.params * 128 * 8 * 640 / (989e12 * 0.35 * 6)
    assert cost["train_parts"]["step"] == pytest.approx(200 * step, rel=1e-3)
    assert cost["influence_parts"]["projection"] == 0  # sjlt: no dense R
    dense = C.estimate_cost(load_config("configs/qwen2.5-1.5b-8gpu.yaml", [f"model.path={qwen}", "influence.proj_kind=rademacher"]),
                            shape, cluster, work)
    wide = C.estimate_cost(load_config("configs/qwen2.5-1.5b-8gpu.yaml", [f"model.path={qwen}", "influence.proj_kind=rademacher",
                                                                        "influence.proj_dim=65536"]), shape, cluster, work)
    # R is regenerated every pass: its cost grows with k (and dwarfs the backward at the paper's k)
    assert wide["influence_parts"]["projection"] == pytest.approx(2 * dense["influence_parts"]["projection"], rel=1e-6)
    assert dense["influence_parts"]["projection"] > 3 * dense["influence_parts"]["gradients"]
    passes = math.ceil(15000 * 8 * 640 * (1 + 0) / 16384)  # training trajectories (validation adds a few)
    assert dense["influence_parts"]["passes"] >= passes
    # one broadcast of the bf16 weights over NVLink per step
    assert cost["train_parts"]["sync"] == pytest.approx(200 * shape.params * 2 / 450e9, abs=0.01)
    assert 0 < cost["selection_over_training"] < 1


def test_cpu_tiny_plan_is_in_the_range_of_the_demo():
    """The tiny demo (make demo) measured per phase about 20 s of influence and 7-25 s of training
    on 2 cores (README, metrics.jsonl); the model should land within a few times of that."""
    cfg = load_config("configs/tiny-cpu.yaml")
    shape = ModelShape.of(cfg.model.path) if Path(cfg.model.path, "config.json").is_file() else _scale_shape()
    from cropi.plan import local_cluster

    cost = C.estimate_cost(cfg, shape, local_cluster(cfg), C.work_of(cfg))
    assert 2 < cost["influence"] < 60 and 2 < cost["train"] < 120
