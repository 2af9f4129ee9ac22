"""`RolloutEngine`: the vLLM engine service of GRPO training, as a Ray actor (a thin shell).

Sampling with rewards from the current weights, the engine's own log-probs, and weight sync.
It writes nothing: the offline buffer has its own writer (`writer.BufferWriter`).
"""

from __future__ import annotations

import ray
from cropi.placement import placement_wait
from cropi.pool import WorkerPool


@ray.remote
class RolloutEngine:
    def __init__(self, cfg, model_path: str, worker_index: int):
        from cropi.rollout.engine import open_engine

        self.cfg = cfg
        self.enc, self.llm, self.reward_fn = open_engine(cfg, model_path, worker_index)

    def ready(self) -> bool:
        """Returns once the engine is up (a queued call waits for __init__)."""
        return True

    def generate(self, rows, n: int, temperature: float, seeds: list[int], where: str = "train") -> dict:
        """Fresh samples from the current weights, rewarded (GRPO rollouts and validation)."""
        from cropi.rollout.engine import sample_and_score

        ro = self.cfg.rollout
        prompt_ids, groups, rewards, comps = sample_and_score(self.llm, self.enc, self.reward_fn, rows, n, temperature,
                                                             ro.top_p, ro.max_new_tokens, seeds, where, True)
        out = {"prompt_ids": prompt_ids, "rewards": rewards.tolist(),
               "response_ids": [[s.token_ids for s in g] for g in groups],
               "logprobs": [[s.logprobs for s in g] for g in groups],
               "truncated": [[s.finish_reason == "length" for s in g] for g in groups]}
        if comps is not None:
            out["reward_components"] = comps
        return out

    def prompt_logprobs(self, token_ids: list[list[int]]) -> list[list[float]]:
        from cropi.rollout.engine import prompt_logprobs

        return prompt_logprobs(self.llm, token_ids)

    def load_weights(self, blob: bytes) -> int:
        """Object-store sync: the trainer's safetensors blob."""
        from cropi.rollout.engine import load_weights

        return load_weights(self.llm, blob)

    def sleep(self) -> None:
        """GPU colocation: free the GPU for the trainer (weights to host memory, KV cache dropped)."""
        self.llm.sleep(level=1)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """GPU colocation: tags ["weights"] before a weight sync, ["kv_cache"] before sampling."""
        self.llm.wake_up(tags)

    def sync_open(self, host: str, port: int, first_rank: int, world: int, timeout_s: float, backend: str,
                  name: str, sender: int = 0, sender_name: str = "trainer rank 0") -> list[int]:
        """Broadcast or ipc sync: every vLLM worker of this engine joins the sync group; `sender` is
        the group rank that sends to it."""
        return self.llm.collective_rpc("cropi_sync_open", args=(host, port, first_rank, world, timeout_s, backend, name,
                                                                sender, sender_name))

    def sync_receive(self, sync_id: int) -> dict:
        """Broadcast or ipc sync: receive the weights in place, then drop prefixes cached under the old ones."""
        out = self.llm.collective_rpc("cropi_sync_receive", args=(sync_id,))[0]
        self.llm.reset_prefix_cache()
        return out


def engine_pool(cfg, model_path: str, tag: str, placement=None, bundles=None, **kw):
    """A WorkerPool of RolloutEngines (in `placement`'s `bundles` when given)."""
    from cropi.rollout.engine import actor_options

    r = cfg.resources.rollout
    # Not restarted by Ray: an engine restarted in place would come back with model_path's weights,
    # not the ones synced since, and sample from a stale policy. Its death ends the training stage,
    # which cropi.loop redoes from the last DeepSpeed checkpoint with new engines (run.max_stage_retries).
    options = {**actor_options(cfg), "max_restarts": 0, "max_task_retries": 0}
    return WorkerPool(RolloutEngine, lambda i: (cfg, model_path, i), count=cfg.train_engines(), cpus=r.num_cpus,
                      gpus=r.num_gpus, what=f"{tag} rollout engines", name=f"cropi-rollout-{tag}",
                      options=options, placement=placement, bundles=bundles, wait=placement_wait(cfg),
                      fields="resources.rollout.num_train_engines (else num_workers), num_cpus and num_gpus", **kw)
