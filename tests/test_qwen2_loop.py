"""The whole loop on a Qwen2-architecture model (tied embeddings, q/k/v biases), what users run.

A tiny Qwen2 is built and warm-started by `cropi make-base-model` with
base_model.architecture=qwen2; then `cropi run` (buffer, exact influence, selection, GRPO with
weight sync into vLLM every step, HF checkpoint) for two phases, projected influence and a
selection on the same buffer, and a weight-sync check: vLLM serving the base Qwen2 scores
tokens like the trained checkpoint once that checkpoint is synced into it.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from cropi.config import load_config

# a whole two-phase run (about 4 min): `make test-all`; CI keeps the tied-embedding weight-sync test
# (test_weight_sync.py) as its sample of the Qwen2 path
pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, sets: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cropi.cli", *args, "configs/tiny-cpu.yaml", *[a for s in sets for a in ("--set", s)]]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qwen2")
    model = tmp / "qwen2-base"
    build = [f"model.path={model}", "base_model.architecture=qwen2", f"data.data_dir={tmp / 'tasks'}",
             "base_model.warm_start_steps=500", "base_model.target_pass_low=0.05"]
    _cli("make-base-model", sets=build)
    sets = build + [f"run.dir={tmp / 'run'}", "data.train_size=96", "data.val_size=8", "rollout.k_val=8",
                    "rollout.shard_size=48", "run.num_phases=2", "trainer.steps_per_phase=2",
                    "trainer.prompts_per_step=4", "trainer.group_size=4", "trainer.eval_every=2",
                    "trainer.eval_samples=2", "trainer.save_every=2", "selection.alpha=0.25",
                    "trainer.max_tokens_per_micro_batch=64", "influence.max_tokens_per_backward=256",
                    "influence.logits_chunk_tokens=64"]
    _cli("run", sets=sets)
    return tmp, model, sets


def test_qwen2_base_model_is_qwen2_with_tied_embeddings(qwen_run):
    from transformers import AutoTokenizer

    _, model, _ = qwen_run
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["tie_word_embeddings"] is True
    tok = AutoTokenizer.from_pretrained(model)
    assert type(tok).__name__ == "Qwen2Tokenizer"  # what vLLM and the trainers load
    ids = tok("417*23=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + 7  # BOS, then one token per digit and sign
    marker = json.loads((model / "cropi_base_model.json").read_text())
    assert max(marker["pass_rates"].values()) > 0.05, marker["pass_rates"]  # advantages are not all zero


def test_qwen2_loop_runs_every_stage(qwen_run):
    tmp, _, _ = qwen_run
    run = tmp / "run"
    for m in range(2):
        pdir = run / f"phase-{m}"
        man = json.loads((pdir / "influence" / "manifest.json").read_text())
        assert man["coverage"]["fraction"] == 1.0, man["coverage"]  # every matrix weight, tied head once
        sel = pq.read_table(pdir / "selection.parquet").to_pylist()
        assert sum(r["selected"] for r in sel) == 24 and len(sel) == 96
        steps = [json.loads(x) for x in (pdir / "train_metrics.jsonl").read_text().splitlines()]
        assert [s["step"] for s in steps] == [0, 1, 2]
        assert all(torch.isfinite(torch.tensor(s["loss"])) for s in steps[1:])
        ckpt = json.loads((pdir / "checkpoint" / "config.json").read_text())
        assert ckpt["model_type"] == "qwen2" and ckpt["tie_word_embeddings"] is True
    # phase 1 scores prompts against theta_1 (phase 0's checkpoint), which differs from the base
    assert json.loads((run / "phase-1" / "influence" / "manifest.json").read_text())["kl_drift"] > 0


def test_qwen2_projected_influence_and_selection(qwen_run):
    tmp, _, sets = qwen_run
    run2 = tmp / "run-projected"
    shutil.copytree(tmp / "run" / "buffer", run2 / "buffer")
    psets = sets + [f"run.dir={run2}", "influence.mode=projected", "influence.proj_kind=sjlt"]
    _cli("influence", "--phase", "0", sets=psets)
    _cli("select", "--phase", "0", sets=psets)
    man = json.loads((run2 / "phase-0" / "influence" / "manifest.json").read_text())
    assert man["mode"] == "projected" and man["proj_kind"] == "sjlt"
    exact = {r["prompt_id"]: r["selected"] for r in pq.read_table(tmp / "run" / "phase-0" / "selection.parquet").to_pylist()}
    proj = {r["prompt_id"]: r["selected"] for r in pq.read_table(run2 / "phase-0" / "selection.parquet").to_pylist()}
    assert set(exact) == set(proj) and sum(proj.values()) == 24
    both = sum(exact[i] and proj[i] for i in exact)
    assert both >= 12, both  # the two modes mostly agree on what to keep (chance: 6 of 24)


def test_qwen2_weight_sync_matches_the_trained_checkpoint(qwen_run):
    import ray
    from safetensors.torch import load_file

    from cropi.model.loading import load_model, load_tokenizer
    from cropi.model.sequences import collate, token_logprobs
    from cropi.rollout.engine_actor import engine_pool
    from cropi.sync.export import to_safetensors_bytes

    tmp, model, sets = qwen_run
    ckpt = tmp / "run" / "phase-0" / "checkpoint"
    tok = load_tokenizer(model)
    seqs = [tok(t)["input_ids"] for t in ("12+34=46", "417*23=9591", "88-9=79", "51%7=2")]
    ids, attn, _ = collate([s[:1] for s in seqs], [s[1:] for s in seqs], tok.pad_token_id)
    with torch.no_grad():
        trained = token_logprobs(load_model(ckpt).eval(), ids, attn)
        base = token_logprobs(load_model(model).eval(), ids, attn)
    cfg = load_config("configs/tiny-cpu.yaml", sets + ["resources.rollout.num_cpus=1"])
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        engines = engine_pool(cfg, str(model), "qwen2-sync")
        (worker,) = engines.actors
        before = ray.get(worker.prompt_logprobs.remote(seqs))
        state = load_file(ckpt / "model.safetensors")
        assert "lm_head.weight" not in state  # tied: the checkpoint stores the embedding once
        ray.get(worker.load_weights.remote(to_safetensors_bytes(state)))
        after = ray.get(worker.prompt_logprobs.remote(seqs))
        engines.close()
    finally:
        ray.shutdown()
    gap = 0.0
    for i, s in enumerate(seqs):
        torch.testing.assert_close(torch.tensor(before[i]), base[i, 1:len(s)], rtol=0, atol=2e-4)
        torch.testing.assert_close(torch.tensor(after[i]), trained[i, 1:len(s)], rtol=0, atol=2e-4)
        gap = max(gap, float((trained[i, 1:len(s)] - base[i, 1:len(s)]).abs().max()))
    assert gap > 1e-3  # two GRPO steps really moved the model
