"""Receiving side of trainer -> vLLM weight sync: a vLLM worker extension.

vLLM instantiates this mix-in inside each worker (`LLM(worker_extension_cls=...)`) and we call
its methods with `llm.collective_rpc(name, args=...)`. Tensors cannot travel in those args,
so the trainer writes a safetensors file (under /dev/shm on one machine) and sends its path.
On the CPU backend `model.load_weights` breaks the repacked oneDNN layers; the worker's own
`reload_weights(weights_iterator=...)` reloads and repacks every layer, so we use that.
(Do not name a method `update_weights`: it clashes with the worker's own.)

Tied embeddings: a checkpoint (and our sync, which sends each tensor once) has no
`lm_head.weight` when the head is the input embedding, but on the CPU backend the head is
repacked separately and keeps its old values if only the embedding is reloaded (measured on
Qwen2: log-probs 0.02 off). So the worker also loads the embedding under the head's name.
"""

from __future__ import annotations

HEAD = "lm_head.weight"


def with_tied_head(tensors: dict, model, tied: bool) -> dict:
    """tensors plus HEAD = the input embedding's tensor, when the model ties them and HEAD is absent.
    A tied model's `lm_head` is its embedding module, and named_parameters() names a shared
    parameter once, by its first (embedding) name."""
    head = getattr(model, "lm_head", None)
    if not tied or HEAD in tensors or head is None:
        return tensors
    name = next((n for n, p in model.named_parameters() if p is head.weight), None)
    if name is None or name not in tensors:
        return tensors
    return {**tensors, HEAD: tensors[name]}


class WeightSyncExtension:
    def cropi_load_weights_file(self, path: str) -> int:
        """Load every tensor in a safetensors file into the running model; returns the count."""
        from safetensors.torch import load_file

        tensors = load_file(path)
        tied = bool(getattr(self.vllm_config.model_config.hf_config, "tie_word_embeddings", False))
        tensors = with_tied_head(tensors, self.get_model(), tied)
        self.reload_weights(weights_iterator=iter(tensors.items()))
        return len(tensors)
