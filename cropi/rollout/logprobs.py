"""Per-token log-probs of given responses under a Hugging Face model (one batched forward).

The gradient engine computes pi_theta with exactly this numerics, so the buffer stores these
as the behavior log-probs beta (and keeps vLLM's beside them to report the mismatch).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def response_logprobs(model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                      batch_size: int = 64) -> list[list[float]]:
    """log p(response_t | prompt, response_<t) for every response token of every sequence."""
    out: list[list[float]] = []
    device = next(model.parameters()).device
    for start in range(0, len(prompt_ids), batch_size):
        ps, rs = prompt_ids[start:start + batch_size], response_ids[start:start + batch_size]
        seqs = [p + r for p, r in zip(ps, rs)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # [B, L]
        mask = torch.zeros((len(seqs), width), dtype=torch.long)  # [B, L]
        for i, s in enumerate(seqs):  # right padding: positions stay 0..len-1
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()  # [B, L, V]
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]  # [B, L-1]
        for i, (p, r) in enumerate(zip(ps, rs)):
            out.append(logp[i, len(p) - 1: len(p) - 1 + len(r)].tolist())
    return out
