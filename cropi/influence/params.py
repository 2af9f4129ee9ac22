"""Which weights a prompt's influence gradient covers.

`linear`: the weight of every nn.Linear module (attention q/k/v/o, MLP gate/up/down, lm_head).
`linear_no_lm_head`: the same without the output embedding (lm_head).
Excluded always: the input embedding, every norm (RMSNorm/LayerNorm gains), and biases. Norm
gains are tiny and their gradients are dominated by a few tokens; the input embedding's
gradient is row-sparse (only the tokens present) and huge, so it mostly adds noise and memory.

Tied embeddings (Qwen2.5-0.5B/1.5B): lm_head.weight *is* the input embedding matrix. Under
`linear` its gradient is the full gradient of that shared matrix, both uses included, exactly as
`.grad` would give it; the batched engine adds the input-side term itself (see batched.py).

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


def chosen_linears(model: nn.Module, params: str) -> dict[str, nn.Linear]:
    """Module name -> nn.Linear whose weight counts, in named_modules() order."""
    if params not in PARAM_CHOICES:
        raise CropiError(f"influence params must be one of {PARAM_CHOICES}, got {params!r}")
    head = output_embedding(model)
    out = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)
           and not (params == "linear_no_lm_head" and m is head)}
    if not out:
        raise CropiError(f"{type(model).__name__} has no nn.Linear weights to take gradients of (params={params!r})")
    return out


def weight_shapes(model: nn.Module, names) -> dict[str, torch.Size]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules or not isinstance(modules[n], nn.Linear)]
    if missing:
        raise CropiError(f"coordinates name layers the model does not have as nn.Linear: {missing[:5]}")
    return {n: modules[n].weight.shape for n in names}
