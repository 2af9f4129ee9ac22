"""Per-token log-probs of given responses under a Hugging Face model (batched forwards).

The gradient engine computes pi_theta with exactly this numerics, so the buffer stores these
as the behavior log-probs beta (and keeps vLLM's beside them to report the mismatch).
"""

from __future__ import annotations

import torch

from cropi.model.sequences import collate, token_logprobs


@torch.no_grad()
def response_logprobs(model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                      batch_size: int = 64) -> list[list[float]]:
    """log p(response_t | prompt, response_<t) for every response token of every sequence."""
    device = next(model.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(prompt_ids), batch_size):
        ids, attn, target = collate(prompt_ids[start:start + batch_size], response_ids[start:start + batch_size], pad_id)
        lp = token_logprobs(model, ids.to(device), attn.to(device)).cpu()  # [B, L]
        out += [lp[i][target[i]].tolist() for i in range(len(ids))]
    return out
