"""Receiving side of trainer -> vLLM weight sync: a vLLM worker extension.

vLLM instantiates this mix-in inside each worker (`LLM(worker_extension_cls=...)`) and we call
its methods with `llm.collective_rpc(name, args=...)`. Tensors cannot travel in those args,
so the trainer writes a safetensors file (under /dev/shm on one machine) and sends its path.
On the CPU backend `model.load_weights` breaks the repacked oneDNN layers; the worker's own
`reload_weights(weights_iterator=...)` reloads and repacks every layer, so we use that.
(Do not name a method `update_weights`: it clashes with the worker's own.)
"""

from __future__ import annotations


class WeightSyncExtension:
    def cropi_load_weights_file(self, path: str) -> int:
        """Load every tensor in a safetensors file into the running model; returns the count."""
        from safetensors.torch import load_file

        tensors = load_file(path)
        self.reload_weights(weights_iterator=iter(tensors.items()))
        return len(tensors)
