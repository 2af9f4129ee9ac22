"""The batched influence engine: every prompt's sampled-coordinate gradient in one backward pass.

1. Rows whose advantage is 0 have g = 0 exactly: they are only run forward, for the KL monitor.
2. The other rows: one forward with all weights frozen (the embedding output is the only leaf
   that requires grad, so no parameter ever gets a .grad). The LM head runs only where a
   response token is scored, on `head_chunk_tokens` positions at a time: each chunk's logits,
   J(s0) terms (objective.py), dJ/dlogits and dJ/dh are formed and the logits dropped, so
   [G, T, vocab] never exists; then one backward through the body from dJ/dh.
3. During that backward, capture.py turns each chosen layer's (input, output-gradient) pair into
   the layer's [G, S_l] per-prompt gradient at the sampled coordinates (one batched matmul per
   row chunk, cut at once) and hands it to a reducer, which keeps only what the mode needs:
   `exact` dots with the validation mean gradients and squared norms, `projected` the
   streaming projector (projection.py), `raw` the sampled gradients themselves.

Per-prompt gradients are formed in `grad_dtype`; dots, norms and projections accumulate in
float64 (exact integer sums inside the projection). Non-finite gradients raise CropiError
naming the prompt ids.

Over 300 lines by design: one algorithm (forward, chunked head, one backward, reducers) whose
parts only make sense together; its helpers are pieces of the same pass.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch

from cropi.errors import CropiError
from cropi.influence.trajectories import TrajectoryBatch
from cropi.influence.coords import flatten, offsets, total_dim
from cropi.influence.capture import LayerGradCapture
from cropi.influence.layout import Layout, body_layout, head_layout
from cropi.influence.objective import kl_from_behavior_samples, offpolicy_objective, token_logp, token_weights
from cropi.influence.params import input_embedding, weight_shapes
from cropi.model.sequences import lm_head
from cropi.influence.projection import make_projector, project

GRAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("exact", "projected", "raw")
HEAD_CHUNK_TOKENS = 1024  # head positions whose [*, vocab] logits exist at once


def _dtype(grad_dtype) -> torch.dtype:
    if isinstance(grad_dtype, torch.dtype):
        return grad_dtype
    if grad_dtype not in GRAD_DTYPES:
        raise CropiError(f"grad_dtype must be one of {list(GRAD_DTYPES)}, got {grad_dtype!r}")
    return GRAD_DTYPES[grad_dtype]


# ----------------------------------------------------------------------------- reducers

class _Exact:
    """<g, v_j> and ||g||^2 per layer (float32 GEMM and pairwise sum, ~1e-7 relative), summed over
    layers in float64 and in coordinate order at the end."""

    def __init__(self, val_grads: dict, coords: dict, device):
        if not val_grads:
            raise CropiError("exact mode needs val_grads: {set name: {layer: [S_l] mean validation gradient}}")
        self.sets = list(val_grads)
        self.v = {}
        for name, idx in coords.items():
            rows = []
            for s in self.sets:
                if name not in val_grads[s] or val_grads[s][name].numel() != idx.numel():
                    raise CropiError(f"val_grads[{s!r}] has no [{idx.numel()}] gradient for layer {name}")
                rows.append(val_grads[s][name].reshape(-1).to(device=device, dtype=torch.float32))
            self.v[name] = torch.stack(rows)  # [n_sets, S_l]
        self.dots, self.sq = {}, {}

    def add(self, name: str, g: torch.Tensor) -> None:
        g = g.float()  # [G, S_l]
        self.dots[name] = (g @ self.v[name].T).double()  # [G, n_sets]
        self.sq[name] = (g * g).sum(1).double()  # [G]

    def finish(self, names) -> tuple[dict, torch.Tensor]:
        dots = sum(self.dots[n] for n in names)  # [G, n_sets]
        norms = sum(self.sq[n] for n in names).sqrt()  # [G]
        bad = ~(torch.isfinite(norms) & torch.isfinite(dots).all(1))
        return {"dots": {s: dots[:, i].float() for i, s in enumerate(self.sets)}, "norms": norms.float()}, bad


class _Project:
    def __init__(self, coords: dict, num_groups: int, proj_dim: int, kind: str, seed: int, device):
        self.offsets = offsets(coords)
        self.proj = make_projector(num_groups, total_dim(coords), proj_dim, kind, seed, device)

    def add(self, name: str, g: torch.Tensor) -> None:
        self.proj.add(g, self.offsets[name][0])

    def finish(self, names) -> tuple[dict, torch.Tensor]:
        return {"projected": self.proj.result()}, self.proj.bad_rows


class _Raw:
    def __init__(self):
        self.grads, self.bad = {}, None

    def add(self, name: str, g: torch.Tensor) -> None:
        g = g.float()  # [G, S_l]
        bad = ~torch.isfinite(g).all(1)
        self.bad = bad if self.bad is None else self.bad | bad
        self.grads[name] = g

    def finish(self, names) -> tuple[dict, torch.Tensor]:
        return {"grads": {n: self.grads[n] for n in names}}, self.bad


# ----------------------------------------------------------------------------- forward / backward

@contextmanager
def _frozen(model):
    """No parameter requires grad; eval mode (no dropout). Both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def _forward_body(model, rows: TrajectoryBatch, row_group: torch.Tensor, num_groups: int, leaf: bool):
    """Forward of `rows` through the body; returns the embedding output E [N, L, H], the head
    layout and the head's inputs h [G, T, H] (the positions whose logits score a response token)."""
    embed = input_embedding(model)(rows.input_ids)  # [N, L, H]
    if leaf:
        embed = embed.detach().requires_grad_(True)
    base = model.base_model
    hidden = base(inputs_embeds=embed, attention_mask=rows.attention_mask, use_cache=False).last_hidden_state  # [N, L, H]
    head = head_layout(rows.target_mask, row_group, num_groups)
    return embed, head, hidden.reshape(-1, hidden.shape[-1])[head.idx]  # [G, T, H]


def _head_columns(num_groups: int, width: int, chunk_tokens: int) -> list[slice]:
    """Column chunks of the [G, T] head layout holding about chunk_tokens positions each."""
    step = max(1, chunk_tokens // max(1, num_groups))
    return [slice(c, c + step) for c in range(0, width, step)]


def _head_logp(model, h: torch.Tensor, targets: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """Policy log-probs [G, T] at the head positions, the head run on column chunks (no grad)."""
    head = lm_head(model)
    cols = _head_columns(h.shape[0], h.shape[1], chunk_tokens)
    return torch.cat([token_logp(head(h[:, c]), targets[:, c]) for c in cols], dim=1)


def _at_targets(t: torch.Tensor, head: Layout) -> torch.Tensor:
    """Values of an [N, L] per-token tensor at the tokens the head layout scores. -> [G, T]"""
    return t.reshape(-1)[head.idx + 1]


def _add_kl(out: dict, logp: torch.Tensor, rows: TrajectoryBatch, head: Layout) -> None:
    """Add per-prompt sums of the KL estimate and response-token counts into out."""
    prompt = rows.prompt_index[head.idx // rows.input_ids.shape[1]][head.valid]  # [M]
    kl = kl_from_behavior_samples(logp.detach(), _at_targets(rows.behavior_logp, head))[head.valid]  # [M]
    out["kl_sum"].index_add_(0, prompt, kl)
    out["kl_count"].index_add_(0, prompt, torch.ones_like(kl))


def _run(model, batch: TrajectoryBatch, coords: dict, reducer, grad_dtype, per_prompt: bool,
         head_chunk_tokens: int = HEAD_CHUNK_TOKENS) -> dict:
    """One forward/backward over `batch`; feeds each layer's [G, S_l] sampled gradient to reducer.

    Groups are the prompts with a non-zero advantage (per_prompt) or one group of all rows.
    Returns the groups' prompt indices, per-prompt KL sums/counts and J, and reducer.finish()."""
    batch.validate()
    gdt = _dtype(grad_dtype)
    device = next(model.parameters()).device
    batch = batch.to(device)
    weight_shapes(model, coords)  # every name must be an nn.Linear of this model
    coords = {n: c.to(device) for n, c in coords.items()}
    p_count = batch.num_prompts
    weight = token_weights(batch.target_mask, batch.advantage, batch.prompt_index, p_count, batch.group_size)  # [N, L]
    live = batch.advantage != 0  # [N]
    live_prompts = torch.unique(batch.prompt_index[live])  # [G] sorted
    out = {"groups": live_prompts, "kl_sum": torch.zeros(p_count, device=device), "objective": torch.zeros(p_count, device=device),
           "kl_count": torch.zeros(p_count, device=device), "reduced": None}

    with _frozen(model):
        if bool((~live).any()):  # g = 0 exactly: forward only, for the drift monitor
            dead = batch.rows(~live)
            with torch.no_grad():
                _, head, h = _forward_body(model, dead, dead.prompt_index, p_count, leaf=False)
                logp = _head_logp(model, h, _at_targets(dead.input_ids, head), head_chunk_tokens)
            _add_kl(out, logp, dead, head)
        if live_prompts.numel() == 0:
            return out
        rows = batch.rows(live)
        remap = torch.full((p_count,), -1, dtype=torch.long, device=device)
        remap[live_prompts] = torch.arange(live_prompts.numel(), device=device)
        row_group = remap[rows.prompt_index] if per_prompt else torch.zeros_like(rows.prompt_index)
        num_groups = live_prompts.numel() if per_prompt else 1
        body = body_layout(rows.target_mask, row_group, num_groups)
        with LayerGradCapture(model, coords, body, gdt, reducer.add) as capture:
            embed, head, h = _forward_body(model, rows, row_group, num_groups, leaf=True)
            w = _at_targets(weight[live][:, :rows.input_ids.shape[1]].contiguous(), head)  # [G, T]
            targets, beta = _at_targets(rows.input_ids, head), _at_targets(rows.behavior_logp, head)  # [G, T]
            group = torch.arange(num_groups, device=device)[:, None].expand_as(head.idx)  # [G, T]
            head_layer = lm_head(model)
            h_leaf = h.detach()
            d_h = torch.zeros_like(h_leaf)  # [G, T, H] dJ/dh, filled chunk by chunk
            j = torch.zeros(num_groups, device=device)
            logps = []
            for c in _head_columns(num_groups, h.shape[1], head_chunk_tokens):
                hc = h_leaf[:, c].requires_grad_(True)  # [G, C, H]
                logits = head_layer(hc)  # [G, C, V], the only logits alive
                logp_c = token_logp(logits, targets[:, c])  # [G, C]
                j_c = offpolicy_objective(logp_c, beta[:, c], w[:, c], head.valid[:, c], group[:, c], num_groups)  # [G]
                d_logits, d_h[:, c] = torch.autograd.grad(j_c.sum(), (logits, hc))
                capture.add_head(d_logits, hc.detach())
                j = j + j_c.detach()
                logps.append(logp_c.detach())
                del logits, d_logits
            logp = torch.cat(logps, dim=1)  # [G, T]
            (d_embed,) = torch.autograd.grad(h, embed, grad_outputs=d_h)  # body hooks fire here, layer by layer
        capture.finish(d_embed, rows.input_ids)
        _add_kl(out, logp, rows, head)
        if per_prompt:
            out["objective"][live_prompts] = j
    out["reduced"] = reducer.finish(list(coords))
    return out


def _scatter(values: torch.Tensor, groups: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """[G, ...] rows of live prompts -> [P, ...] with zeros for prompts whose g is 0."""
    out = torch.zeros((num_prompts,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
    out[groups] = values
    return out


def _check_finite(bad, groups, batch: TrajectoryBatch, grad_dtype) -> None:
    if bad is not None and bool(bad.any()):
        names = [batch.prompt_name(int(groups[i])) for i in torch.nonzero(bad).flatten().tolist()]
        raise CropiError(f"non-finite influence gradient (NaN/inf) for prompt id(s) {names} "
                         f"(grad_dtype={grad_dtype}; float16 overflows first)")


def _with_grad(fn):
    """Run fn with autograd on even when the caller sits in no_grad or inference mode."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)
    return wrapper


@_with_grad
def prompt_scores(model, batch: TrajectoryBatch, coords: dict, mode: str, *, val_grads: dict | None = None,
                  proj_dim: int = 1024, proj_kind: str = "rademacher", seed: int = 0,
                  grad_dtype="float32", head_chunk_tokens: int = HEAD_CHUNK_TOKENS) -> dict:
    """Influence outputs for every prompt of `batch` from one forward and one backward pass.

    mode `exact`: 'dots' {set: [P]} = <g, v_set>, 'norms' [P] = ||g|| (val_grads required).
    mode `projected`: 'projected' [P, k] = sampled g projected with (proj_dim, proj_kind, seed).
    mode `raw`: 'grads' {layer: [P, S_l]} float32 sampled gradients.
    Always: 'kl' [P] token-mean KL(pi_theta||beta) estimate, 'num_tokens' [P] response tokens,
    'objective' [P] J(s0), 'zero_grad' [P] True where every advantage is 0 (g = 0 exactly).
    """
    if mode not in MODES:
        raise CropiError(f"influence mode must be one of {MODES}, got {mode!r}")
    device = next(model.parameters()).device
    live = torch.unique(batch.prompt_index[batch.advantage != 0])
    groups = live.numel()
    if mode == "exact":
        reducer = _Exact(val_grads, coords, device)
    elif mode == "projected":
        reducer = _Project(coords, max(groups, 1), proj_dim, proj_kind, seed, device)
    else:
        reducer = _Raw()
    run = _run(model, batch, coords, reducer, grad_dtype, per_prompt=True, head_chunk_tokens=head_chunk_tokens)
    p = batch.num_prompts
    out = {"kl": (run["kl_sum"] / run["kl_count"].clamp(min=1)).cpu(), "num_tokens": run["kl_count"].long().cpu(),
           "objective": run["objective"].cpu(), "zero_grad": torch.ones(p, dtype=torch.bool)}
    out["zero_grad"][run["groups"].cpu()] = False
    if run["reduced"] is None:  # no prompt with a non-zero advantage
        if mode == "exact":
            out.update(dots={s: torch.zeros(p) for s in val_grads}, norms=torch.zeros(p))
        elif mode == "projected":
            out["projected"] = torch.zeros(p, proj_dim)
        else:
            out["grads"] = {n: torch.zeros(p, c.numel()) for n, c in coords.items()}
        return out
    reduced, bad = run["reduced"]
    _check_finite(bad, run["groups"], batch, grad_dtype)
    g = run["groups"]
    if mode == "exact":
        out["dots"] = {s: _scatter(v, g, p).cpu() for s, v in reduced["dots"].items()}
        out["norms"] = _scatter(reduced["norms"], g, p).cpu()
    elif mode == "projected":
        out["projected"] = _scatter(reduced["projected"], g, p).cpu()
    else:
        out["grads"] = {n: _scatter(v, g, p).cpu() for n, v in reduced["grads"].items()}
    return out


@_with_grad
def validation_mean_gradient(model, batches, coords: dict, grad_dtype="float32",
                             head_chunk_tokens: int = HEAD_CHUNK_TOKENS, num_prompts: int | None = None) -> dict[str, torch.Tensor]:
    """Mean over all prompts of `batches` of g(s0) at the sampled coordinates: {layer: [S_l]}.

    = gradient of the mean objective: one backward per batch on sum_p J(p), all tokens in one
    group, summed over batches and divided by the total prompt count (zero-gradient prompts
    count; cosine scores do not depend on that scale). `num_prompts` gives that count when a
    prompt is split over several batches (trajectories.split_passes), else it is the batches' sum.
    """
    total, count = None, 0
    for batch in batches:
        reducer = _Raw()
        run = _run(model, batch, coords, reducer, grad_dtype, per_prompt=False, head_chunk_tokens=head_chunk_tokens)
        count += batch.num_prompts
        if run["reduced"] is None:
            continue
        reduced, bad = run["reduced"]
        if bad is not None and bool(bad.any()):
            ids = [batch.prompt_name(int(p)) for p in run["groups"].tolist()]
            raise CropiError(f"non-finite validation gradient (NaN/inf) in the batch of prompt ids {ids} "
                             f"(grad_dtype={grad_dtype})")
        grads = {n: g[0] for n, g in reduced["grads"].items()}
        total = grads if total is None else {n: total[n] + grads[n] for n in grads}
    if count == 0:
        raise CropiError("validation_mean_gradient: no batches")
    count = num_prompts or count
    if total is None:
        return {n: torch.zeros(c.numel()) for n, c in coords.items()}
    return {n: (g / count).cpu() for n, g in total.items()}


def split_prompt_scores(model, parts: list[TrajectoryBatch], coords: dict, mode: str, *, val_grads: dict | None = None,
                        proj_dim: int = 1024, proj_kind: str = "rademacher", seed: int = 0,
                        grad_dtype="float32", head_chunk_tokens: int = HEAD_CHUNK_TOKENS) -> dict:
    """prompt_scores for ONE prompt whose trajectories come in several batches (each made with
    group_size = the prompt's whole K, trajectories.split_passes): the parts' raw sampled gradients are
    summed (a prompt's gradient is a sum over its trajectories), then reduced as prompt_scores
    would. Same outputs, with P = 1."""

    if mode not in MODES:
        raise CropiError(f"influence mode must be one of {MODES}, got {mode!r}")
    total, kl_sum, tokens, objective, zero = None, 0.0, 0, 0.0, True
    for part in parts:
        r = prompt_scores(model, part, coords, "raw", grad_dtype=grad_dtype, head_chunk_tokens=head_chunk_tokens)
        total = r["grads"] if total is None else {n: total[n] + g for n, g in r["grads"].items()}
        kl_sum += float(r["kl"][0]) * int(r["num_tokens"][0])
        tokens += int(r["num_tokens"][0])
        objective += float(r["objective"][0])
        zero = zero and bool(r["zero_grad"][0])
    out = {"kl": torch.tensor([kl_sum / max(tokens, 1)]), "num_tokens": torch.tensor([tokens]),
           "objective": torch.tensor([objective]), "zero_grad": torch.tensor([zero])}
    g = flatten(total, coords).double()  # [1, D]
    if not bool(torch.isfinite(g).all()):
        raise CropiError(f"non-finite influence gradient (NaN/inf) for prompt id(s) [{parts[0].prompt_name(0)}] "
                         f"(grad_dtype={grad_dtype})")
    if mode == "exact":
        if not val_grads:
            raise CropiError("exact mode needs val_grads")
        out["dots"] = {s: (g @ flatten({n: v.reshape(-1) for n, v in vg.items()}, coords).double()).float()
                       for s, vg in val_grads.items()}
        out["norms"] = g.norm(dim=1).float()
    elif mode == "projected":
        out["projected"] = project(g.float(), proj_dim, proj_kind, seed)
    else:
        out["grads"] = total
    return out
