"""Getting full weights out of a DeepSpeed engine: for vLLM weight sync and HF checkpoints."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch


def _without_aliases(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor once: a tied lm_head.weight is the embedding's storage under a second name.
    The first name is kept (state_dict order puts the embedding first, as HF checkpoints do)."""
    seen, out = set(), {}
    for k, v in sd.items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else (k,)
        if key not in seen:
            seen.add(key)
            out[k] = v
    return out


def gathered(params, zero_stage: int):
    """Context in which `params` are whole on every rank: ZeRO-3 gathers them (a collective of all
    ranks) and releases them on exit; stages 0-2 keep them whole already."""
    if zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def gathered_state_dict(engine, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full, unsharded parameters, tied ones once."""
    module = engine.module
    with gathered(module.parameters(), zero_stage):
        return {k: v.detach().clone().cpu() for k, v in _without_aliases(module.state_dict()).items()}


def state_dict_bytes(engine, zero_stage: int) -> bytes:
    """The full weights, tied ones once, serialised straight from the (gathered) parameters: one
    copy of the model in host memory, the bytes themselves (the object-store sync's payload)."""
    from safetensors.torch import save

    module = engine.module
    with gathered(module.parameters(), zero_stage), torch.no_grad():
        return save({k: v.detach().contiguous() for k, v in _without_aliases(module.state_dict()).items()})


def to_safetensors_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share storage
    return save({k: v.contiguous().clone() for k, v in sd.items()})


def save_hf_checkpoint(module, sd: dict[str, torch.Tensor], directory: str | Path, tokenizer_from: str | Path) -> None:
    """save_pretrained + tokenizer, written to DIR.partial then renamed: a checkpoint that exists is whole."""
    from transformers import AutoTokenizer

    out = Path(directory)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    module.save_pretrained(tmp, state_dict=sd)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)



