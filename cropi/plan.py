"""`cropi plan CONFIG`: the estimated peak memory of every stage on one device, before launch.

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
               + the colocated vLLM engine's gpu_memory_utilization share under placement: shared
gradient actor weights (b) + activations of one pass (max_tokens_per_backward, no parameter
               gradients, so the same per-token figure) + its head chunk
               + per-prompt sampled gradients of the largest layer (prompts in a pass x
                 sample_ratio x its weight x 4) + exact mode's validation targets (sets x
                 sample_ratio x covered weights x 4)
rollout worker vLLM: gpu_memory_utilization x the device (GPU); weights + kv_cache_gib (CPU)

The activation constants are counts of [tokens, width] tensors a decoder layer keeps for
backward (q, k, v, attention output, two norms, residuals; gate, up, activation, down input) and
are checked against measured peaks in benchmarks/scale.py. A `cropi run` whose estimate for
any stage exceeds the device is refused, naming the fields that bring it down.
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
        return cls(params, sum(mats), max(mats), text.vocab_size, text.hidden_size,
                   getattr(text, "intermediate_size", 4 * text.hidden_size), text.num_hidden_layers)

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


def estimate(cfg, shape: ModelShape | None = None) -> dict:
    """{stage: {part: GiB, ..., "total": GiB}} for one device, and the device's memory."""
    shape = shape or ModelShape.of(cfg.model.path)
    b, t, inf = BYTES[cfg.model.dtype], cfg.trainer, cfg.influence
    w, z = t.world_size, t.zero_stage
    p = shape.params
    cuda = cfg.resources.device == "cuda"
    trainer = {
        "weights": p * b / (w if z == 3 else 1), "reference_model": p * b,
        "gradients": p * b / (w if z >= 2 else 1),
        "optimizer_states": p * (8 + (4 if b < 4 else 0)) / (w if z >= 1 else 1),
        "activations": shape.activations(t.max_tokens_per_micro_batch or 0, b, t.gradient_checkpointing),
        "logits_chunk": shape.head_chunk(t.logits_chunk_tokens),
    }
    if cuda and cfg.resources.placement == "shared":
        trainer["colocated_vllm"] = cfg.resources.rollout.gpu_memory_utilization * device_memory_gib(cfg) * GIB
    sets = max(1, len(cfg.data.val_paths) if not cfg.data.synthetic else len(cfg.data.families))
    # prompts of K full-length trajectories in one pass (shorter responses pack more)
    per_pass_prompts = max(1, inf.max_tokens_per_backward // (cfg.rollout.k_train * cfg.rollout.max_model_len))
    gradient = {
        "weights": p * b,
        "activations": shape.activations(inf.max_tokens_per_backward or 0, b, False),
        "logits_chunk": shape.head_chunk(inf.logits_chunk_tokens, INFLUENCE_HEAD_COPIES),
        "per_prompt_gradients": per_pass_prompts * inf.sample_ratio * shape.largest_matrix * 4,
        "validation_targets": (sets * inf.sample_ratio * shape.matrix_params * 4) if inf.mode == "exact" else 0.0,
    }
    rollout = ({"vllm": cfg.resources.rollout.gpu_memory_utilization * device_memory_gib(cfg) * GIB} if cuda else
               {"weights": p * b, "kv_cache": cfg.resources.rollout.kv_cache_gib * GIB})
    out = {}
    for name, parts in (("trainer rank", trainer), ("gradient actor", gradient), ("rollout worker", rollout)):
        gib = {k: round(v / GIB, 3) for k, v in parts.items()}
        gib["total"] = round(sum(parts.values()) / GIB, 3)
        out[name] = gib
    return {"model": str(cfg.model.path), "device": cfg.resources.device,
            "device_memory_gib": round(device_memory_gib(cfg), 1), "model_parameters": p, "stages": out}


FIXES = {
    "trainer rank": "trainer.max_tokens_per_micro_batch, trainer.logits_chunk_tokens, trainer.gradient_checkpointing "
                    "or trainer.zero_stage",
    "gradient actor": "influence.max_tokens_per_backward, influence.logits_chunk_tokens or influence.sample_ratio",
    "rollout worker": "resources.rollout.gpu_memory_utilization or resources.rollout.kv_cache_gib",
}


def check(plan: dict) -> None:
    """Refuse a plan whose estimate for any stage exceeds the device, naming the fields to change."""
    over = [(name, s["total"]) for name, s in plan["stages"].items() if s["total"] > plan["device_memory_gib"]]
    if over:
        raise CropiError("; ".join(f"{name}: estimated peak {gib:.1f} GiB > {plan['device_memory_gib']} GiB per device "
                                   f"(lower {FIXES[name]})" for name, gib in over)
                         + " -- see `cropi plan CONFIG`")


def render(plan: dict) -> str:
    lines = [f"{plan.get('model', 'model')}: {plan['model_parameters'] / 1e6:,.1f}M parameters; {plan['device']} device of "
             f"{plan['device_memory_gib']} GiB", "", "| stage | estimated peak GiB | parts (GiB) |", "| --- | --- | --- |"]
    for name, parts in plan["stages"].items():
        detail = ", ".join(f"{k} {v}" for k, v in parts.items() if k != "total")
        fits = "" if parts["total"] <= plan["device_memory_gib"] else " **does not fit**"
        lines.append(f"| {name} | {parts['total']}{fits} | {detail} |")
    return "\n".join(lines)
