"""Hashes that key artifacts, at the bottom of the package (it imports nothing of cropi, so the
config, the store and the data may all use it).

`stable_hash(obj)`: a short sha256 of a JSON-able object, keys sorted: what an artifact was built
from (cropi.config.Config.artifact_hash and the keys of cropi.store).

`content_digest(path)`: what a model directory holds, as one digest -- the key by which a model
enters an artifact. A model replaced in place (same path, other weights) must not reuse a buffer
computed from the old one, and a model copied elsewhere may. So `model.path` enters every key by
content: the sha256 of each regular file directly in the directory (config, weights, tokenizer),
by name. Hashing a 7B checkpoint reads ~15 GB once; the file digests are cached by (path, size,
mtime) in `$CROPI_CACHE_DIR` (default ~/.cache/cropi/file-digests.json), so later calls only stat
the files. A path that does not exist (a hub id not yet resolved, a test's placeholder) enters by
its name.
"""


from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def stable_hash(obj) -> str:
    """Short sha256 of a JSON-able object (keys sorted): what an artifact was built from."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


_SKIP = ("cropi_base_model.json",)  # the tiny model's build record: metadata, not weights
_memo: dict[tuple[str, int, int], str] = {}


def _cache_file() -> Path:
    return Path(os.environ.get("CROPI_CACHE_DIR") or Path.home() / ".cache" / "cropi") / "file-digests.json"


def _load_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict) -> None:
    """Written whole under a temporary name, then renamed: a reader never sees half a cache."""
    target = _cache_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".file-digests.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(cache, fh)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_digest(path: Path, cache: dict | None = None) -> str:
    """sha256 of one file, memoised by (resolved path, size, mtime_ns)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _memo:
        return _memo[key]
    skey = "|".join(map(str, key))
    if cache is not None and skey in cache:
        digest = cache[skey]
    else:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        digest = h.hexdigest()
        if cache is not None:
            cache[skey] = digest
    _memo[key] = digest
    return digest


def content_digest(path: str) -> str:
    """'sha256:<hex>' of the directory's files (or of the file) at `path`; the path itself if absent."""
    p = Path(path)
    if not p.exists():
        return str(path)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file() and f.name not in _SKIP)
    cache = None
    before = 0
    if any((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) not in _memo for f in files):
        cache = _load_cache()
        before = len(cache)
    digests = {f.name: file_digest(f, cache) for f in files}
    if cache is not None and len(cache) != before:
        try:
            _save_cache(cache)
        except OSError:  # a read-only home: the in-process memo still holds
            pass
    return "sha256:" + stable_hash(digests)
