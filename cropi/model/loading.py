"""Loading Hugging Face checkpoints with errors that name the path."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cropi.errors import CropiError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_dir(path: str | Path) -> Path:
    """A Hugging Face checkpoint directory: config.json, weights and a tokenizer."""
    p = Path(path)
    if not p.is_dir():
        raise CropiError(f"model path {p} does not exist or is not a directory "
                         "(run `cropi make-base-model CONFIG` for the tiny model, or set model.path)")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise CropiError(f"model path {p} has no config.json: not a Hugging Face checkpoint")
    try:
        json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise CropiError(f"{cfg} is not valid JSON ({e.msg})") from None
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise CropiError(f"model path {p} has no weights (*.safetensors or *.bin)")
    return p


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    p = check_model_dir(path)
    try:
        tok = AutoTokenizer.from_pretrained(p)
    except Exception as e:
        raise CropiError(f"cannot load a tokenizer from {p}: {type(e).__name__}: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(path: str | Path, dtype: str = "float32", device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    p = check_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=DTYPES[dtype])
    except Exception as e:
        raise CropiError(f"cannot load a causal LM from {p}: {type(e).__name__}: {e}") from None
    return model.to(device)
