"""`model.path` as a Hugging Face hub id (`Qwen/Qwen2.5-1.5B`), resolved once on the driver.

The id is looked up in the local Hugging Face cache (`HF_HOME`, or `HF_HUB_CACHE`) first, with
no network; only when the cache lacks it, and `HF_HUB_OFFLINE` is not set, is it downloaded.
Every actor then gets the snapshot's local directory: none of them touches the hub. A path that
exists locally, or whose parent directory does, or that starts with `/`, `.` or `~`, is a path,
never an id. `model.revision` pins a branch, tag or commit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cropi.errors import CropiError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(path: str) -> bool:
    if not _HUB_ID.match(path) or path.startswith((".", "/", "~")):
        return False
    p = Path(path)
    return not p.exists() and not p.parent.is_dir()


def cached_snapshot(repo: str, revision: str | None = None) -> str | None:
    """The local snapshot directory of a hub id in the Hugging Face cache, or None (no network)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, revision=revision, local_files_only=True)
    except Exception:  # not in the cache (or an incomplete entry)
        return None


def resolve_model_path(path: str, revision: str | None = None) -> str:
    """A local checkpoint directory for `path`: itself, or the cached (else downloaded) hub snapshot."""
    if not looks_like_hub_id(path):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    cached = cached_snapshot(path, revision)
    if cached is not None:
        return cached
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise CropiError(f"model.path {path!r} is not a local directory, and the Hugging Face cache "
                         f"({HF_HUB_CACHE}) has no snapshot of it while HF_HUB_OFFLINE is set: download it "
                         f"where there is a network (`huggingface-cli download {path}`) into that cache, "
                         "or give a local path") from None
    try:
        return snapshot_download(path, revision=revision)
    except Exception as e:
        raise CropiError(f"model.path {path!r} is neither a local directory nor a hub id in the Hugging Face "
                         f"cache ({HF_HUB_CACHE}), and downloading it failed: {type(e).__name__}: {str(e)[:300]} "
                         "(for the tiny model run `cropi make-base-model CONFIG`)") from None


def resolve(cfg):
    """cfg with model.path replaced by the local directory it names (the same object, changed)."""
    cfg.model.path = resolve_model_path(cfg.model.path, cfg.model.revision or None)
    return cfg
