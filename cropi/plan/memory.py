"""Memory of `cropi plan`: the estimated peak of every actor kind on one device, before launch.

From the model's config.json alone (parameter counts by instantiating it on the meta device)
and the config's budgets. Per device, in GiB:

trainer rank   weights (b bytes/param; /W under ZeRO-3) + frozen reference model (b)
               + gradients (b; /W under ZeRO >= 2) + AdamW states (8 bytes, + 4 for fp32
               master weights when b < 4; /W under ZeRO >= 1)
               + activations of one micro-batch: T = max_tokens_per_micro_batch tokens x layers
                 x (ACT_HIDDEN x hidden + ACT_MLP x intermediate) x b, or, with
                 gradient_checkpointing, T x layers x hidden x b plus one layer's full set
               + the LM-head chunk: HEAD_COPIES x logits_chunk_tokens x vocab x 4 (float32 logits,
                 log-softmax, and its gradient or exp)
               (+ on CUDA a context per process; the engine that shares its GPU under placement
               shared is added by cropi.plan.packing, asleep while the rank steps)
trainer rank   resting (kept alive between steps and phases): weights, reference, gradients,
               optimizer states
gradient actor weights (b) + activations of one pass (max_tokens_per_backward, no parameter
               gradients, so the same per-token figure) + its head chunk
               + per-prompt sampled gradients of the largest layer (prompts in a pass x
                 sample_ratio x its weight x 4) + exact mode's validation targets (sets x
                 sample_ratio x covered weights x 4)
rollout worker vLLM: gpu_memory_utilization x the device (GPU); weights + kv_cache_gib (CPU);
               asleep (vLLM sleep mode, level 1): a residual (SLEEP_RESIDUAL_GIB)
buffer writer  a rollout worker plus, with rollout.hf_recompute, its Hugging Face model for the
               behavior log-probs (weights, one layer's activations, a head chunk) in the same process

The activation constants are counts of [tokens, width] tensors a decoder layer keeps for
backward (q, k, v, attention output, two norms, residuals; gate, up, activation, down input) and
are checked against measured peaks in benchmarks/scale.py. A `cropi run` whose estimate for
any actor, or for the actors sharing one device at any stage (cropi.plan.packing), exceeds the
device is refused, naming the fields that bring it down.
"""

from __future__ import annotations

from dataclasses import dataclass

from cropi.errors import CropiError

GIB = 2 ** 30
ACT_HIDDEN, ACT_MLP = 12, 4
HEAD_COPIES = 3  # trainer: float32 logits, log-softmax, and its gradient (recomputed per chunk)
INFLUENCE_HEAD_COPIES = 4  # influence engine: logits, log-softmax, dJ/dlogits and the softmax of its backward
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class ModelShape:
    params: int
    matrix_params: int
    largest_matrix: int
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    kv_width: int = 0  # key/value heads x head size (the KV cache's width per layer); 0: hidden

    @classmethod
    def of(cls, model_path: str) -> "ModelShape":
        from transformers import AutoConfig

        try:
            hf = AutoConfig.from_pretrained(model_path)
        except Exception as e:
            raise CropiError(f"model.path {model_path}: cannot read a Hugging Face config ({type(e).__name__}: {e})") from None
        return cls.from_config(hf)

    @classmethod
    def from_config(cls, hf) -> "ModelShape":
        """From a transformers PretrainedConfig (the model is built on the meta device: no memory)."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf)
        seen, params, mats = set(), 0, []
        for p in model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            params += p.numel()
            if p.dim() >= 2:
                mats.append(p.numel())
        text = getattr(hf, "text_config", hf)
        heads = getattr(text, "num_attention_heads", 1) or 1
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv = (getattr(text, "num_key_value_heads", None) or heads) * head_dim
        return cls(params, sum(mats), max(mats), text.vocab_size, text.hidden_size,
                   getattr(text, "intermediate_size", 4 * text.hidden_size), text.num_hidden_layers, kv)

    def activations(self, tokens: int, dtype_bytes: int, checkpointing: bool) -> float:
        per_layer = tokens * (ACT_HIDDEN * self.hidden + ACT_MLP * self.intermediate) * dtype_bytes
        if checkpointing:
            return tokens * self.hidden * dtype_bytes * self.layers + per_layer
        return per_layer * self.layers

    def head_chunk(self, chunk_tokens: int, copies: int = HEAD_COPIES) -> float:
        return copies * chunk_tokens * self.vocab * 4


def device_memory_gib(cfg) -> float:
    if cfg.resources.device_memory_gib > 0:
        return cfg.resources.device_memory_gib
    if cfg.resources.device == "cpu":
        import psutil

        return psutil.virtual_memory().total / GIB
    import torch

    if not torch.cuda.is_available():
        raise CropiError("resources.device is cuda but this process sees no GPU (a Ray driver on a CPU head node?): "
                         "set resources.device_memory_gib to the memory of one GPU")
    return torch.cuda.get_device_properties(0).total_memory / GIB


CUDA_CONTEXT_GIB = 0.75  # per GPU process: CUDA context, cuBLAS/NCCL workspaces (assumption; not measured here)
SLEEP_RESIDUAL_GIB = 1.0  # a vLLM engine asleep (level 1): context and buffers outside its sleep pool (assumption)
RECOMPUTE_TOKENS = 16384  # the buffer writer's HF recompute forward budget (cropi.rollout.logprobs)


def actor_parts(cfg, shape: ModelShape, device_gib: float) -> dict[str, dict[str, float]]:
    """{actor: {part: bytes}} of every actor kind, and of the states a kept-alive service rests in,
    on one device. What the per-device check (cropi.plan.packing) adds up for the actors that
    share a GPU (or, on CPU, a node's memory) at each stage."""
    from cropi.influence.projection import SJLT_CACHE_MB, SJLT_NONZEROS  # torch: loaded by ModelShape already

    b, t, inf = BYTES[cfg.model.dtype], cfg.trainer, cfg.influence
    w, z = t.world_size, t.zero_stage
    p = shape.params
    cuda = cfg.resources.device == "cuda"
    ctx = {"cuda_context": CUDA_CONTEXT_GIB * GIB} if cuda else {}
    resting = {  # what a rank keeps between steps and phases: weights, reference, gradients, AdamW
        "weights": p * b / (w if z == 3 else 1), "reference_model": p * b,
        "gradients": p * b / (w if z >= 2 else 1),
        "optimizer_states": p * (8 + (4 if b < 4 else 0)) / (w if z >= 1 else 1), **ctx,
    }
    trainer = {**resting,
               "activations": shape.activations(t.max_tokens_per_micro_batch or 0, b, t.gradient_checkpointing),
               "logits_chunk": shape.head_chunk(t.logits_chunk_tokens)}
    sets = max(1, len(cfg.data.val_paths) if not cfg.data.synthetic else len(cfg.data.families))
    # prompts of K full-length trajectories in one pass (shorter responses pack more)
    per_pass_prompts = max(1, inf.max_tokens_per_backward // (cfg.rollout.k_train * cfg.rollout.max_model_len))
    gradient = {
        "weights": p * b,
        "activations": shape.activations(inf.max_tokens_per_backward or 0, b, False),
        "logits_chunk": shape.head_chunk(inf.logits_chunk_tokens, INFLUENCE_HEAD_COPIES),
        "per_prompt_gradients": per_pass_prompts * inf.sample_ratio * shape.largest_matrix * 4,
        "validation_targets": (sets * inf.sample_ratio * shape.matrix_params * 4) if inf.mode == "exact" else 0.0,
        "sjlt_hash_cache": min(SJLT_CACHE_MB * 2 ** 20, SJLT_NONZEROS * 8 * inf.sample_ratio * shape.matrix_params)
        if inf.mode == "projected" and inf.proj_kind == "sjlt" else 0.0,
        **ctx,
    }
    engine = ({"vllm": cfg.resources.rollout.gpu_memory_utilization * device_gib * GIB} if cuda else
              {"weights": p * b, "kv_cache": cfg.resources.rollout.kv_cache_gib * GIB})
    asleep = {"vllm_asleep": SLEEP_RESIDUAL_GIB * GIB} if cuda else dict(engine)
    writer = dict(engine)
    if cfg.rollout.hf_recompute:  # the behavior log-probs' HF forward, in the writer's process, beside vLLM
        writer.update(recompute_weights=p * b,
                      recompute_activations=RECOMPUTE_TOKENS * (4 * shape.hidden + 2 * shape.intermediate) * b,
                      recompute_logits_chunk=shape.head_chunk(1024, 2))
    released = dict(ctx)  # a kept-alive gradient actor between its stages: the process, no model
    return {"trainer rank": trainer, "trainer rank (resting)": resting, "gradient actor": gradient,
            "gradient actor (released)": released,
            "rollout worker": engine, "rollout worker (asleep)": asleep, "buffer writer": writer}


ACTORS = ("trainer rank", "gradient actor", "rollout worker", "buffer writer")


def estimate(cfg, shape: ModelShape | None = None, device_gib: float | None = None) -> dict:
    """{stage: {part: GiB, ..., "total": GiB}} of one actor of each kind on one device, and the
    device's memory (device_gib, else the config's or this machine's). Actors that share a device
    are added up by cropi.plan.packing."""
    shape = shape or ModelShape.of(cfg.model.path)
    dev = device_gib or device_memory_gib(cfg)
    parts = actor_parts(cfg, shape, dev)
    out = {}
    for name in ACTORS:
        gib = {k: round(v / GIB, 3) for k, v in parts[name].items()}
        gib["total"] = round(sum(parts[name].values()) / GIB, 3)
        out[name] = gib
    return {"model": str(cfg.model.path), "device": cfg.resources.device,
            "device_memory_gib": round(dev, 1), "model_parameters": shape.params, "stages": out}


FIXES = {
    "trainer rank": "trainer.max_tokens_per_micro_batch, trainer.logits_chunk_tokens, trainer.gradient_checkpointing "
                    "or trainer.zero_stage",
    "gradient actor": "influence.max_tokens_per_backward, influence.logits_chunk_tokens or influence.sample_ratio",
    "rollout worker": "resources.rollout.gpu_memory_utilization or resources.rollout.kv_cache_gib",
    "buffer writer": "resources.rollout.gpu_memory_utilization (vLLM's share) or rollout.hf_recompute=false",
}
