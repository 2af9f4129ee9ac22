"""GRPO step time broken down by stage, and trainer-group start-up: actor group vs Ray Train.

Runs one short phase with `run_phase` on the tiny model (world size 2, ZeRO-2, gloo) and
reports the mean seconds per step of: rollout (vLLM, fresh samples), log-prob (old + reference
forward passes), train (forward/backward/optimizer step), weight sync (trainer -> vLLM), and
evaluation. Then measures the start-up of the two ways to run DeepSpeed ranks under Ray, side
by side: our plain actor group (`TrainerGroup`) and Ray Train's `TorchTrainer` doing the same
`deepspeed.initialize` in its train loop.
Usage: .venv/bin/python -m benchmarks.trainer_step [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result


def _torchtrainer_startup(model_path: str, world: int) -> float:
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def loop(config):
        import os

        os.environ["DS_ACCELERATOR"] = "cpu"
        import deepspeed
        import torch

        from cropi.model.loading import load_model

        model = load_model(config["path"])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        deepspeed.initialize(model=model, optimizer=opt, config={
            "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "train_batch_size": config["world"], "zero_optimization": {"stage": 2}})

    t0 = time.time()
    trainer = TorchTrainer(loop, train_loop_config={"path": model_path, "world": world},
                           scaling_config=ScalingConfig(num_workers=world, resources_per_worker={"CPU": 0.5}),
                           torch_config=TorchConfig(backend="gloo"),
                           run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(prefix="cropi-rt-")))
    trainer.fit()
    return time.time() - t0


def _group_startup(cfg, model_path: str) -> float:
    from cropi.trainer.group import TrainerGroup

    t0 = time.time()
    g = TrainerGroup(cfg, model_path, model_path, tag="bench")
    dt = time.time() - t0
    g.shutdown()
    return dt


def main() -> None:
    import ray

    from cropi.config import load_config
    from cropi.data.suite import load_data
    from cropi.trainer.phase import run_phase

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="cropi-bench-train-"))
    cfg = load_config("configs/tiny-cpu.yaml", [f"run.dir={run}", "trainer.eval_every=10", "trainer.save_every=1000"])
    pool, val = load_data(cfg)
    model = str(Path(cfg.model.path).resolve())
    ray.init(num_cpus=2, include_dashboard=True, configure_logging=False)
    try:
        summary = run_phase(cfg, 0, args.steps, pool, [r.prompt_id for r in pool], val, model,
                            log=lambda *_: None)
        lines = [json.loads(x) for x in (run / "phase-0" / "train_metrics.jsonl").read_text().splitlines()][1:]
        keys = ["rollout_seconds", "logprob_seconds", "train_seconds", "train_step_seconds", "sync_seconds"]
        per_step = {k: round(statistics.mean(m[k] for m in lines), 4) for k in keys}
        evals = [m["eval_seconds"] for m in lines if "eval_seconds" in m]
        group = [_group_startup(cfg, model) for _ in range(2)]
        rt = [_torchtrainer_startup(model, cfg.trainer.world_size) for _ in range(2)]
    finally:
        ray.shutdown()
    res = {
        "model_parameters": 394624, "world_size": cfg.trainer.world_size, "zero_stage": cfg.trainer.zero_stage,
        "batch": f"{cfg.trainer.prompts_per_step} prompts x {cfg.trainer.group_size} rollouts", "steps": args.steps,
        "mean_seconds_per_step": per_step,
        "note": "train_step_seconds is the driver's wall time for the DeepSpeed step (includes Ray calls); "
                "logprob and train are the slowest rank's own timings",
        "eval_seconds_each": round(statistics.mean(evals), 3) if evals else None,
        "mean_response_tokens_per_step": statistics.mean(m["response_tokens"] for m in lines),
        "phase_startup_seconds (vLLM worker + trainer group)": round(summary["startup_seconds"], 2),
        "trainer_group_startup_seconds": [round(x, 2) for x in group],
        "ray_train_torchtrainer_startup_seconds": [round(x, 2) for x in rt],
    }
    write_result("trainer_step", res)


if __name__ == "__main__":
    main()
