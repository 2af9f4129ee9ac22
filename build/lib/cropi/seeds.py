"""Every derived seed of a run, named in one place.

All randomness comes from `run.seed` through these functions; nothing seeds a global RNG for
good (`torch_seeded` scopes torch's global generator to a block and restores it). A seed that
depends on a prompt depends on its id and split only, never on sharding, batching or the number
of workers, so results do not change when the resources do.
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager

_MOD = 2**31 - 1


def prompt_seed(base: int, split: str, key: int) -> int:
    """A seed for one (split, key) under `base`: the mixing every per-prompt seed below uses."""
    return (base * 1_000_003 + zlib.crc32(split.encode()) * 7919 + key) % _MOD


def buffer_sample(run_seed: int, split: str, prompt_id: int) -> int:
    """vLLM sampling seed of one prompt's K buffer trajectories (split 'train', 'val/<set>', 'refresh/phase-M')."""
    return prompt_seed(run_seed, split, prompt_id)


def engine(run_seed: int, worker_index: int) -> int:
    """vLLM engine seed of rollout worker i (requests carry their own seeds; this covers the rest)."""
    return run_seed + worker_index


def coordinates(run_seed: int) -> int:
    """Sparse coordinate subset of the influence gradient: the same for every prompt, split and phase."""
    return run_seed + 17


def projection(run_seed: int) -> int:
    """Random projection matrix of the influence gradient: the same for every prompt, split and phase."""
    return run_seed + 29


def val_targets(run_seed: int) -> int:
    """Which validation prompts form each set's target (with the set name): the same in every phase and mode."""
    return run_seed


def train_batch(run_seed: int, phase: int, step: int) -> int:
    """Which selected prompts GRPO step `step` of phase `phase` draws (a resumed phase draws the same)."""
    return prompt_seed(run_seed, f"train/phase{phase}", step)


def train_rollout(run_seed: int, phase: int, step: int, prompt_id: int, round_: int = 0) -> int:
    """vLLM sampling seed of one prompt's G rollouts at a GRPO step (round > 0: dynamic sampling's
    extra rounds, so a prompt drawn twice in a step gets fresh samples)."""
    split = f"train/phase{phase}" if round_ == 0 else f"train/phase{phase}/round{round_}"
    return prompt_seed(run_seed + step, split, prompt_id)


def evaluation(run_seed: int, step: int, set_name: str, prompt_id: int) -> int:
    """vLLM sampling seed of one validation prompt's pass@1 samples at a step."""
    return prompt_seed(run_seed + 7 + step, f"eval/{set_name}", prompt_id)


def random_baseline(run_seed: int, phase: int) -> int:
    """The `random` baseline's draw of phase `phase`'s subset."""
    return run_seed * 7919 + phase


def task_suite(run_seed: int) -> int:
    """The synthetic task suite's problems (training pool and validation sets)."""
    return run_seed


def base_model_init(run_seed: int) -> int:
    """Initial weights of the tiny base model."""
    return run_seed


def warm_start_data(run_seed: int) -> int:
    """The warm start's stream of fresh problems."""
    return run_seed + 1


def warm_start_eval(run_seed: int, step: int) -> int:
    """Sampling during the warm start's pass-rate check at `step`."""
    return run_seed + step


@contextmanager
def torch_seeded(seed: int):
    """torch's global generator seeded for the block only (for library code that draws from it,
    such as a model's initialisation or `generate`), then restored."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
