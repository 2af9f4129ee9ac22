"""Which weights a prompt's influence gradient covers.

`linear`: the weight of every nn.Linear module (attention q/k/v/o, MLP gate/up/down, lm_head),
and of every transformers `Conv1D` (GPT-2's attention and MLP: y = x W + b with W [in, out],
the transpose of nn.Linear's layout; capture.py forms its gradient in that layout).
`linear_no_lm_head`: the same without the output embedding (lm_head).
Every other matrix parameter (2-D or more, not an embedding table) must be covered: a model
whose matrices live elsewhere (fused MoE expert tensors, a router held as a bare Parameter) is
refused with the uncovered names, rather than scored on a silent fraction of its weights.
`coverage` reports what fraction of the matrix weights the gradient covers.
Excluded always: the input embedding, every norm (RMSNorm/LayerNorm gains), and biases. Norm
gains are tiny and their gradients are dominated by a few tokens; the input embedding's
gradient is row-sparse (only the tokens present) and huge, so it mostly adds noise and memory.

Tied embeddings (Qwen2.5-0.5B/1.5B): lm_head.weight *is* the input embedding matrix. Under
`linear` its gradient is the full gradient of that shared matrix, both uses included, exactly as
`.grad` would give it; the batched engine adds the input-side term itself (see gradients.py).

Layers are keyed by module name (`model.layers.0.self_attn.q_proj`) and always listed in
`named_modules()` order; that order defines the flattened gradient vector.
"""

from __future__ import annotations

import torch
from torch import nn

from cropi.errors import CropiError

PARAM_CHOICES = ("linear", "linear_no_lm_head")


def output_embedding(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    return get() if get is not None else None


def input_embedding(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    if get is None or get() is None:
        raise CropiError(f"{type(model).__name__} has no get_input_embeddings(): not a Hugging Face causal LM")
    return get()


def lm_head_is_tied(model: nn.Module) -> bool:
    head = output_embedding(model)
    return head is not None and head.weight is input_embedding(model).weight


def is_conv1d(m: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer storing W as [in, out]."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None


def _is_matrix_layer(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or is_conv1d(m)


def chosen_linears(model: nn.Module, params: str) -> dict[str, nn.Module]:
    """Module name -> linear layer (nn.Linear or Conv1D) whose weight counts, in named_modules()
    order. Refuses a model with matrix weights no chosen layer covers (see the module docstring)."""
    if params not in PARAM_CHOICES:
        raise CropiError(f"influence params must be one of {PARAM_CHOICES}, got {params!r}")
    head = output_embedding(model)
    out = {name: m for name, m in model.named_modules() if _is_matrix_layer(m)
           and not (params == "linear_no_lm_head" and m is head)}
    if not out:
        raise CropiError(f"{type(model).__name__} has no linear weights to take gradients of (params={params!r})")
    uncovered = [n for n, _ in _matrix_params(model) if n not in _covered_names(model)]
    if uncovered:
        raise CropiError(f"{type(model).__name__}: influence gradients cover nn.Linear and Conv1D weights only, and "
                         f"{len(uncovered)} matrix weights are neither, e.g. {uncovered[:4]}; this architecture is "
                         "not supported by influence.params (the gradient would leave them out)")
    return out


def _matrix_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every matrix weight (2-D or more) that is not an embedding table."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = output_embedding(model)
    if head is not None and head.weight is input_embedding(model).weight:
        embeddings.discard(id(head.weight))  # tied: the lm_head covers it
    return [(n, p) for n, p in model.named_parameters() if p.dim() >= 2 and id(p) not in embeddings]


def _covered_names(model: nn.Module) -> set[str]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(m.weight)] for m in model.modules() if _is_matrix_layer(m) and id(m.weight) in name_of}


def coverage(model: nn.Module, coords: dict) -> dict:
    """What the sampled gradient covers: matrix parameters whose layer is in coords, against all."""
    modules = dict(model.named_modules())
    chosen = {id(modules[n].weight) for n in coords}
    total = _matrix_params(model)
    covered = sum(p.numel() for _, p in total if id(p) in chosen)
    size = sum(p.numel() for _, p in total)
    return {"covered_matrix_params": covered, "matrix_params": size, "fraction": covered / max(size, 1),
            "layers": len(coords)}


def weight_shapes(model: nn.Module, names) -> dict[str, torch.Size]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules or not _is_matrix_layer(modules[n])]
    if missing:
        raise CropiError(f"coordinates name layers the model does not have as nn.Linear or Conv1D: {missing[:5]}")
    return {n: modules[n].weight.shape for n in names}
