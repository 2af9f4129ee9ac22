"""A batch of stored trajectories: what the influence engines read.

Row n is one trajectory: prompt tokens then response tokens, right-padded to L. Position j
holds token input_ids[n, j]; when it is a response token, `target_mask[n, j]` is True and its
log-prob under a policy comes from the logits at j-1 (so target_mask[:, 0] is always False).
`behavior_logp[n, j]` is log beta(input_ids[n, j] | prefix), 0 off the response.
`prompt_index[n]` says which of the P prompts the row belongs to; prompts may have different
numbers of trajectories K_p. `prompt_ids` are the caller's ids, used only in messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from cropi.errors import CropiError
from cropi.model.sequences import budget_batches


@dataclass
class TrajectoryBatch:
    input_ids: torch.Tensor       # [N, L] long, right-padded
    attention_mask: torch.Tensor  # [N, L] long, 1 on prompt and response tokens
    target_mask: torch.Tensor     # [N, L] bool, True on response tokens
    behavior_logp: torch.Tensor   # [N, L] float, log beta of token j at j; 0 off the response
    advantage: torch.Tensor       # [N] float, group-normalised advantage of each trajectory
    prompt_index: torch.Tensor    # [N] long in 0..P-1
    num_prompts: int              # P
    prompt_ids: tuple | None = None  # P external ids, for error messages; None: 0..P-1
    group_size: torch.Tensor | None = None  # [P] long: K_p of the whole prompt when the batch holds part of it

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    def prompt_name(self, p: int) -> int:
        return self.prompt_ids[p] if self.prompt_ids is not None else p

    def trajectories_per_prompt(self) -> torch.Tensor:
        return torch.bincount(self.prompt_index, minlength=self.num_prompts)  # [P] K_p

    def to(self, device) -> "TrajectoryBatch":
        move = {f: getattr(self, f).to(device) for f in
                ("input_ids", "attention_mask", "target_mask", "behavior_logp", "advantage", "prompt_index")}
        if self.group_size is not None:
            move["group_size"] = self.group_size.to(device)
        return replace(self, **move)

    def rows(self, keep: torch.Tensor, trim: bool = True) -> "TrajectoryBatch":
        """The sub-batch of rows where `keep` [N] is True, trimmed to its longest row unless
        trim=False. Prompt indices are unchanged (a prompt may lose all its rows)."""
        keep = keep.to(self.input_ids.device)
        width = self.input_ids.shape[1]
        if trim and bool(keep.any()):
            width = int(self.attention_mask[keep].sum(1).max().item())
        return replace(self, input_ids=self.input_ids[keep, :width], attention_mask=self.attention_mask[keep, :width],
                       target_mask=self.target_mask[keep, :width], behavior_logp=self.behavior_logp[keep, :width],
                       advantage=self.advantage[keep], prompt_index=self.prompt_index[keep])

    def validate(self) -> "TrajectoryBatch":
        n, length = self.input_ids.shape
        for name, t, dtype in (("attention_mask", self.attention_mask, None), ("target_mask", self.target_mask, torch.bool),
                               ("behavior_logp", self.behavior_logp, None)):
            if tuple(t.shape) != (n, length):
                raise CropiError(f"TrajectoryBatch.{name} has shape {tuple(t.shape)}, expected {(n, length)} like input_ids")
            if dtype is not None and t.dtype != dtype:
                raise CropiError(f"TrajectoryBatch.{name} must be {dtype}, got {t.dtype}")
        for name, t in (("advantage", self.advantage), ("prompt_index", self.prompt_index)):
            if tuple(t.shape) != (n,):
                raise CropiError(f"TrajectoryBatch.{name} has shape {tuple(t.shape)}, expected ({n},)")
        if self.num_prompts < 1 or n < 1:
            raise CropiError(f"TrajectoryBatch is empty ({n} rows, {self.num_prompts} prompts)")
        if int(self.prompt_index.min()) < 0 or int(self.prompt_index.max()) >= self.num_prompts:
            raise CropiError(f"TrajectoryBatch.prompt_index must lie in 0..{self.num_prompts - 1}")
        if bool((self.trajectories_per_prompt() == 0).any()):
            missing = [self.prompt_name(p) for p in torch.nonzero(self.trajectories_per_prompt() == 0).flatten().tolist()]
            raise CropiError(f"TrajectoryBatch has no trajectory for prompt(s) {missing}")
        if bool(self.target_mask[:, 0].any()):
            raise CropiError("TrajectoryBatch.target_mask[:, 0] must be False: the first token has no logits before it")
        if bool((self.target_mask & (self.attention_mask == 0)).any()):
            raise CropiError("TrajectoryBatch.target_mask is True on a padded position (attention_mask 0)")
        empty = self.target_mask.sum(1) == 0
        if bool(empty.any()):
            rows = torch.nonzero(empty).flatten().tolist()
            raise CropiError(f"TrajectoryBatch rows {rows} (prompt(s) {sorted({self.prompt_name(int(self.prompt_index[r])) for r in rows})}) "
                             "have no response tokens")
        if self.prompt_ids is not None and len(self.prompt_ids) != self.num_prompts:
            raise CropiError(f"TrajectoryBatch.prompt_ids has {len(self.prompt_ids)} ids for {self.num_prompts} prompts")
        return self


def make_batch(rows: list[dict], pad_id: int, group_size: dict[int, int] | None = None) -> tuple[TrajectoryBatch, list[int]]:
    """Build a batch from buffer rows {prompt_ids, response_ids, behavior_logp, advantage, prompt_id}.

    Rows are grouped by prompt_id in first-seen order (a prompt's trajectories become contiguous
    rows, in their given order); returns the batch and the prompt ids, index p <-> ids[p].
    `group_size` {prompt_id: K_p} says how many trajectories a prompt has in all, when `rows`
    hold only some of them (a prompt split over several passes).
    """
    if not rows:
        raise CropiError("make_batch: no rows")
    order: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        for key in ("prompt_ids", "response_ids", "behavior_logp", "advantage", "prompt_id"):
            if key not in r:
                raise CropiError(f"make_batch: row {i} has no field {key!r}")
        pid = int(r["prompt_id"])
        if len(r["prompt_ids"]) == 0:
            raise CropiError(f"make_batch: row {i} (prompt_id {pid}) has no prompt tokens")
        if len(r["response_ids"]) == 0:
            raise CropiError(f"make_batch: row {i} (prompt_id {pid}) has no response tokens")
        if len(r["behavior_logp"]) != len(r["response_ids"]):
            raise CropiError(f"make_batch: row {i} (prompt_id {pid}) has {len(r['behavior_logp'])} behavior log-probs "
                             f"for {len(r['response_ids'])} response tokens")
        if not all(math.isfinite(float(v)) for v in r["behavior_logp"]) or not math.isfinite(float(r["advantage"])):
            raise CropiError(f"make_batch: row {i} (prompt_id {pid}) has a non-finite behavior log-prob or advantage")
        order.setdefault(pid, []).append(i)
    ids = list(order)
    ranked = [(p, i) for p, pid in enumerate(ids) for i in order[pid]]
    width = max(len(rows[i]["prompt_ids"]) + len(rows[i]["response_ids"]) for _, i in ranked)
    n = len(ranked)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    target_mask = torch.zeros((n, width), dtype=torch.bool)
    behavior_logp = torch.zeros((n, width), dtype=torch.float32)
    for row, (_, i) in enumerate(ranked):
        prompt, resp = rows[i]["prompt_ids"], rows[i]["response_ids"]
        a, b = len(prompt), len(prompt) + len(resp)
        input_ids[row, :b] = torch.tensor(list(prompt) + list(resp), dtype=torch.long)
        attention_mask[row, :b] = 1
        target_mask[row, a:b] = True
        behavior_logp[row, a:b] = torch.tensor(rows[i]["behavior_logp"], dtype=torch.float32)
    batch = TrajectoryBatch(
        input_ids=input_ids, attention_mask=attention_mask, target_mask=target_mask, behavior_logp=behavior_logp,
        advantage=torch.tensor([float(rows[i]["advantage"]) for _, i in ranked], dtype=torch.float32),
        prompt_index=torch.tensor([p for p, _ in ranked], dtype=torch.long),
        num_prompts=len(ids), prompt_ids=tuple(ids),
        group_size=None if group_size is None else torch.tensor([group_size[i] for i in ids], dtype=torch.long))
    return batch.validate(), ids


def split_passes(rows: list[dict], max_tokens: int) -> list[tuple[list[dict], dict[int, int] | None]]:
    """Backward passes over buffer rows under a token budget (rows x longest row <= max_tokens).

    Whole prompts are packed in their order; a prompt whose K trajectories alone exceed the
    budget is cut into parts (model.sequences.budget_batches), each a pass of its own returned
    with {prompt_id: K} so that its objective keeps the whole prompt's 1/K normalisation: the
    parts' gradients then sum to the prompt's gradient exactly. -> [(rows, group_size or None)]
    """

    def length(r):
        return len(r["prompt_ids"]) + len(r["response_ids"])

    by: dict[int, list[dict]] = {}
    for r in rows:
        by.setdefault(int(r["prompt_id"]), []).append(r)
    passes: list[tuple[list[dict], dict | None]] = []
    cur: list[dict] = []
    width = 0
    for pid, group in by.items():
        w = max(length(r) for r in group)
        if max_tokens > 0 and len(group) * w > max_tokens:
            for idx in budget_batches([length(r) for r in group], max_tokens):
                passes.append(([group[i] for i in sorted(idx)], {pid: len(group)}))
            continue
        if cur and max_tokens > 0 and (len(cur) + len(group)) * max(width, w) > max_tokens:
            passes.append((cur, None))
            cur, width = [], 0
        cur, width = cur + group, max(width, w)
    if cur:
        passes.append((cur, None))
    return passes
