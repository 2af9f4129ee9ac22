"""The reference engine: one plain autograd backward per prompt. Slow and obvious on purpose.

For each prompt: run the model's ordinary forward on that prompt's trajectories alone (full
logits), J(s0) from objective.py, J.backward() into the parameters' .grad, flatten each chosen
weight's .grad, index the sampled coordinates, concatenate, cast to grad_dtype, then project or
dot. Same signature and outputs as cropi.influence.gradients.prompt_scores; the tests hold the
batched engine to it. Also here: the dense [N, L] forms of the objective and the drift KL that
the reference uses (the engine computes them on its grouped layout), and the trainer's k3.

The prompt's rows keep the batch's padded width: in float32 a Hugging Face forward of the same
tokens differs by ~5e-6 in log-prob when the padded width changes (attention kernels block
over the key length), which after the advantage-weighted cancellation in g is a few 1e-6
relative. Same width isolates what the reference is for: the engine's gradient math.
"""

from __future__ import annotations

import torch

from cropi.errors import CropiError
from cropi.influence.trajectories import TrajectoryBatch
from cropi.influence.gradients import MODES, _dtype, _with_grad
from cropi.influence.gradients import prompt_scores as engine_prompt_scores
from cropi.influence.coords import flatten
from cropi.influence.objective import kl_from_behavior_samples, offpolicy_objective, token_logp, token_weights
from cropi.influence.projection import project


def prompt_objective(logp: torch.Tensor, batch) -> torch.Tensor:
    """J(s0) for every prompt of a TrajectoryBatch, from dense [N, L] policy log-probs. -> [P]"""
    w = token_weights(batch.target_mask, batch.advantage, batch.prompt_index, batch.num_prompts)  # [N, L]
    group = batch.prompt_index[:, None].expand_as(batch.target_mask)  # [N, L]
    return offpolicy_objective(logp, batch.behavior_logp, w, batch.target_mask, group, batch.num_prompts)


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The trainer's k3 estimator exp(ref - logp) - (ref - logp) - 1 (tokens sampled from pi_theta)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def prompt_kl(logp: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean KL estimate per prompt and its response-token count. -> ([P], [P])"""
    mask = batch.target_mask
    kl = torch.where(mask, kl_from_behavior_samples(logp, batch.behavior_logp), torch.zeros_like(logp))  # [N, L]
    sums = torch.zeros(batch.num_prompts, device=logp.device).index_add(0, batch.prompt_index, kl.sum(1))  # [P]
    counts = torch.zeros(batch.num_prompts, device=logp.device).index_add(0, batch.prompt_index, mask.sum(1).float())
    return sums / counts.clamp(min=1), counts


def prompt_gradients(model, batch: TrajectoryBatch, coords: dict, grad_dtype="float32") -> dict[str, torch.Tensor]:
    """The batched engine's raw sampled per-prompt gradients {layer: [P, S_l]} (float32)."""
    return engine_prompt_scores(model, batch, coords, "raw", grad_dtype=grad_dtype)["grads"]


def dense_logp(model, batch: TrajectoryBatch) -> torch.Tensor:
    """log pi_theta of token j at position j (from the logits at j-1), 0 off the response. -> [N, L]"""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits  # [N, L, V]
    logp = token_logp(logits[:, :-1], batch.input_ids[:, 1:])  # [N, L-1]
    logp = torch.cat([torch.zeros_like(logp[:, :1]), logp], dim=1)  # [N, L]
    return torch.where(batch.target_mask, logp, torch.zeros_like(logp))


@_with_grad
def prompt_scores(model, batch: TrajectoryBatch, coords: dict, mode: str, *, val_grads: dict | None = None,
                  proj_dim: int = 1024, proj_kind: str = "rademacher", seed: int = 0,
                  grad_dtype="float32") -> dict:
    if mode not in MODES:
        raise CropiError(f"influence mode must be one of {MODES}, got {mode!r}")
    batch.validate()
    device = next(model.parameters()).device
    batch = batch.to(device)
    gdt = _dtype(grad_dtype)
    modules = dict(model.named_modules())
    training, flags = model.training, [(q, q.requires_grad) for q in model.parameters()]
    model.eval()
    for q, _ in flags:
        q.requires_grad_(True)
    flat_val = None
    if mode == "exact":
        if not val_grads:
            raise CropiError("exact mode needs val_grads")
        flat_val = {s: flatten({n: v.reshape(-1).double() for n, v in g.items()}, coords).to(device)
                    for s, g in val_grads.items()}
    p_count = batch.num_prompts
    flats, kl, tokens, objective = [], torch.zeros(p_count), torch.zeros(p_count), torch.zeros(p_count)
    try:
        for p in range(p_count):
            rows = batch.rows(batch.prompt_index == p, trim=False)  # same padded width as the batch
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                logp = dense_logp(model, rows)  # [K_p, L]
                j = prompt_objective(logp, rows)[p]
                j.backward()
            kl_p, n_p = prompt_kl(logp.detach(), rows)
            kl[p], tokens[p], objective[p] = kl_p[p], n_p[p], j.detach()
            parts = []
            for name, idx in coords.items():
                grad = modules[name].weight.grad
                grad = torch.zeros_like(modules[name].weight) if grad is None else grad
                parts.append(grad.reshape(-1)[idx.to(device)])
            flat = torch.cat(parts).to(gdt).float()  # [D]
            if not bool(torch.isfinite(flat).all()):
                raise CropiError(f"non-finite influence gradient (NaN/inf) for prompt id(s) [{batch.prompt_name(p)}]")
            flats.append(flat)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(training)
        for q, flag in flags:
            q.requires_grad_(flag)
    g = torch.stack(flats)  # [P, D]
    out = {"kl": kl, "num_tokens": tokens.long(), "objective": objective,
           "zero_grad": torch.tensor([bool((batch.advantage[batch.prompt_index == p] == 0).all())
                                      for p in range(p_count)])}
    if mode == "exact":
        out["dots"] = {s: (g.double() @ v).float().cpu() for s, v in flat_val.items()}
        out["norms"] = g.double().norm(dim=1).float().cpu()
    elif mode == "projected":
        out["projected"] = project(g, proj_dim, proj_kind, seed).cpu()
    else:
        sizes = [idx.numel() for idx in coords.values()]
        out["grads"] = dict(zip(coords, (t.cpu() for t in torch.split(g, sizes, dim=1))))
    return out
