"""Per-token log-probs of given responses under a Hugging Face model (token-budgeted forwards).

The gradient engine computes pi_theta with this numerics (float32 log-softmax of the LM head),
so the buffer stores these as the behavior log-probs beta (and keeps vLLM's beside them to
report the mismatch).
"""

from __future__ import annotations

import torch

from cropi.model.sequences import budget_batches, collate, response_logprobs as chunked_logprobs


@torch.no_grad()
def response_logprobs(model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                      max_tokens: int = 16384, chunk_tokens: int = 1024) -> list[list[float]]:
    """log p(response_t | prompt, response_<t) for every response token of every sequence, in
    forwards of at most `max_tokens` padded tokens."""
    device = next(model.parameters()).device
    out: list[list[float] | None] = [None] * len(prompt_ids)
    for idx in budget_batches([len(p) + len(r) for p, r in zip(prompt_ids, response_ids)], max_tokens):
        ids, attn, target = collate([prompt_ids[i] for i in idx], [response_ids[i] for i in idx], pad_id)
        lp = chunked_logprobs(model, ids.to(device), attn.to(device), target.to(device), chunk_tokens).cpu()  # [B, L]
        for row, i in enumerate(idx):
            out[i] = lp[row][target[row]].tolist()
    return out
