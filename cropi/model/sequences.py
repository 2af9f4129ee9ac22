"""Padding trajectories into tensors, and per-token log-probs of a causal LM on them.

Convention shared with the influence engine: sequences are prompt + response, right-padded;
`target_mask[i, j]` is True where token j is a response token, and `logp[i, j]` is the
log-prob of token j given tokens < j (so column 0 is never a target).
"""

from __future__ import annotations

import torch


def collate(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int):
    """-> input_ids [N, L], attention_mask [N, L], target_mask [N, L] (bool)."""
    seqs = [p + r for p, r in zip(prompt_ids, response_ids)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    target = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompt_ids, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        target[i, len(p): len(s)] = True
    return ids, attn, target


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_entropy: bool = False):
    """logp [N, L] of each token given its prefix (0 in column 0); optionally entropy [N, L]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # [N, L, V]
    logsm = torch.log_softmax(logits[:, :-1], dim=-1)  # [N, L-1, V]
    lp = logsm.gather(-1, input_ids[:, 1:, None])[..., 0]  # [N, L-1]
    lp = torch.nn.functional.pad(lp, (1, 0))  # [N, L]
    if not with_entropy:
        return lp
    with torch.no_grad():
        ent = -(logsm.exp() * logsm).sum(-1)  # [N, L-1]
    return lp, torch.nn.functional.pad(ent, (1, 0))
