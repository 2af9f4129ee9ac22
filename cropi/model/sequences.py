"""Padding trajectories into tensors, and per-token log-probs of a causal LM on them.

Convention shared with the influence engine: sequences are prompt + response, right-padded;
`target_mask[i, j]` is True where token j is a response token, and `logp[i, j]` is the
log-prob of token j given tokens < j (so column 0 is never a target).

`response_logprobs` never forms the [N, L, V] logits: the transformer body runs once, then the
LM head and the log-softmax run on `chunk_tokens` response positions at a time (float32). With
autograd on, each chunk is recomputed in the backward pass (activation checkpointing of the
head), so at most one chunk's [C, V] logits exist at any moment, forward or backward. At
V = 151,936 and C = 1,024 that is 0.6 GB per float32 [C, V] tensor, against 213 GB for the
logits of 171 sequences of 2,048 tokens.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


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


def budget_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices of `lengths`, longest first, cut into micro-batches of padded size <= max_tokens
    (0: no budget, one micro-batch)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if max_tokens <= 0:
        return [order] if order else []
    batches: list[list[int]] = []
    for i in order:
        # sorted longest first: the batch's padded width is its first sequence's length
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def lm_head(model) -> torch.nn.Module:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise TypeError(f"{type(model).__name__} has no output embedding (get_output_embeddings() is None)")
    return head


def log_softmax32(logits: torch.Tensor) -> torch.Tensor:
    """The one log-prob primitive: log softmax over the vocabulary in float32, whatever the model
    dtype. The trainer, the buffer's recompute (both through response_logprobs) and the influence
    engine (token_logp, inside its hand-written head backward) all score tokens with it, which is
    what makes rho = 1 exactly at theta = beta."""
    return torch.log_softmax(logits.float(), dim=-1)


def token_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] [...] from logits [..., V] (float32)."""
    return log_softmax32(logits).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _head_chunk(head, h: torch.Tensor, targets: torch.Tensor, with_entropy: bool):
    """log p(target) [C] (and entropy [C], without grad) from hidden states h [C, H]."""
    logsm = log_softmax32(head(h))  # [C, V]
    lp = logsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [C]
    if not with_entropy:
        return lp, torch.zeros_like(lp).detach()
    if with_entropy == "grad":  # the entropy bonus of the loss: differentiable
        return lp, -(logsm.exp() * logsm).sum(-1)
    with torch.no_grad():
        ent = -(logsm.exp() * logsm).sum(-1)  # [C]
    return lp, ent


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor,
                      chunk_tokens: int = 1024, with_entropy: bool = False):
    """logp [N, L] of each response token given its prefix, 0 elsewhere; with_entropy also
    returns the policy entropy [N, L] at those positions (no grad; with_entropy="grad": with grad,
    for an entropy bonus). Chunked head, see above."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False).last_hidden_state  # [N, L, H]
    n, j = torch.nonzero(target_mask, as_tuple=True)  # [T] response positions (j >= 1)
    h = hidden[n, j - 1]  # [T, H]: the position whose logits score token j
    targets = input_ids[n, j]  # [T]
    head = lm_head(model)
    recompute = torch.is_grad_enabled() and h.requires_grad
    lps, ents = [], []
    for s in range(0, h.shape[0], chunk_tokens):
        args = (head, h[s:s + chunk_tokens], targets[s:s + chunk_tokens], with_entropy)
        lp, ent = checkpoint(_head_chunk, *args, use_reentrant=False) if recompute else _head_chunk(*args)
        lps.append(lp)
        ents.append(ent)
    shape = input_ids.shape
    zeros = torch.zeros(shape, dtype=torch.float32, device=input_ids.device)
    lp = zeros.index_put((n, j), torch.cat(lps)) if lps else zeros  # [N, L]
    if not with_entropy:
        return lp
    return lp, (zeros.index_put((n, j), torch.cat(ents)) if ents else zeros)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk_tokens: int = 1024):
    """logp [N, L] of every token given its prefix (0 in column 0 and on padding): the chunked
    head on every attended position after the first."""
    target = attention_mask.bool().clone()
    target[:, 0] = False
    return response_logprobs(model, input_ids, attention_mask, target, chunk_tokens)
