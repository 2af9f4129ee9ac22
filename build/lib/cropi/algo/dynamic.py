"""DAPO dynamic sampling (Yu et al. 2025; verl's and OpenRLHF's `filter_groups`): a GRPO batch
made only of groups whose rewards differ.

A group of G rollouts whose rewards are all equal has advantage 0 for every rollout: it adds
no policy-gradient signal, only dilutes the token mean. With `trainer.dynamic_sampling` a step
rolls out its B prompts, keeps the groups with unequal rewards, and while fewer than B are
kept and fewer than `dynamic_max_batches` extra rounds have run, draws B more prompts from the
selection and rolls them out too. The kept groups, in the order they came, truncated to B,
form the batch; a step whose cap ran out trains on fewer than B groups (none at all: the
optimizer step is skipped). Every rollout generated counts in the step's metrics.
Pure Python/torch: the driver (trainer.phase) does the rolling out.
"""

from __future__ import annotations

import torch


def varied(rewards: torch.Tensor) -> list[int]:
    """Indices of the groups (rows of rewards [P, G]) whose rewards are not all equal."""
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [prompts, group], got shape {tuple(rewards.shape)}")
    return [i for i in range(rewards.shape[0]) if bool((rewards[i] != rewards[i, 0]).any())]


class DynamicBatch:
    """Accumulates rounds of rollouts until `want` varied groups are kept or the cap is reached.

    add(out, rewards) takes one round's rollout dict (lists indexed by prompt) and its rewards
    [P, G]; `full()` says whether to stop; `batch()` returns the kept rollouts (<= want groups)."""

    def __init__(self, want: int, max_extra_rounds: int):
        self.want, self.max_extra = want, max_extra_rounds
        self.rounds = 0  # rounds rolled out, the first included
        self.generated_groups = 0
        self.kept: dict[str, list] = {}
        self.kept_rewards: list[torch.Tensor] = []

    def add(self, out: dict, rewards: torch.Tensor) -> None:
        self.rounds += 1
        self.generated_groups += rewards.shape[0]
        for i in varied(rewards):
            if len(self.kept_rewards) >= self.want:
                break
            for k, v in out.items():
                self.kept.setdefault(k, []).append(v[i])
            self.kept_rewards.append(rewards[i])

    def done(self) -> bool:
        return len(self.kept_rewards) >= self.want or self.rounds > self.max_extra

    def batch(self) -> tuple[dict, torch.Tensor]:
        """(kept rollouts, their rewards [kept, G]); kept may be 0."""
        if not self.kept_rewards:
            return {}, torch.zeros(0, 0, dtype=torch.float64)
        return self.kept, torch.stack(self.kept_rewards)
