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
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise CropiError(f"{index} is not a safetensors index ({type(e).__name__}: {e})") from None
        missing = sorted(s for s in shards if not (p / s).is_file())
        if missing:
            raise CropiError(f"model path {p}: {index.name} names shards that are missing: {missing[:3]}")
    for f in sorted(p.glob("*.safetensors")):
        check_safetensors(f)
    return p


def check_safetensors(f: Path) -> None:
    """A safetensors file whose header parses and whose tensors all lie inside the file: a copy cut
    short (a crash, a full disk) is named here on the driver, not as a dead worker later."""
    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit in {size} bytes")
            header = json.loads(fh.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise CropiError(f"{f} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    if 8 + n + end > size:
        raise CropiError(f"{f} is truncated: its tensors need {8 + n + end} bytes, the file has {size}")


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
