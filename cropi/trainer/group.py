"""`TrainerGroup`: W `TrainerRank` actors forming one data-parallel DeepSpeed job.

We use a plain group of Ray actors that own their process group rather than Ray Train's
TorchTrainer: the group persists across the steps of a phase while the driver interleaves
vLLM rollouts and weight sync between optimizer steps, which a TorchTrainer's single
train-loop function would have to pull through queues; and it starts faster (see the
trainer benchmark for the measured start-up).
"""

from __future__ import annotations

import ray

from cropi.config import Config
from cropi.ray_utils import get
from cropi.trainer.rank import TrainerRank


class TrainerGroup:
    def __init__(self, cfg: Config, init_path: str, ref_path: str, tag: str = "0", placement=None,
                 bundles: list[int] | None = None):
        """Ranks go into `placement`'s `bundles` (cropi.placement); without one, into a group of their own."""
        from cropi.placement import workers_placement

        t = cfg.trainer
        self.own_placement = placement is None
        if placement is None:
            placement = workers_placement(t.world_size, t.num_cpus_per_worker, t.num_gpus_per_worker, "trainer group")
            bundles = list(range(t.world_size))
        self.placement = placement
        env = {"DS_ACCELERATOR": "cpu"} if cfg.resources.device == "cpu" else {}
        self.ranks = [TrainerRank.options(
            name=f"cropi-trainer-{tag}-rank{r}", num_cpus=t.num_cpus_per_worker, num_gpus=t.num_gpus_per_worker,
            runtime_env={"env_vars": env}, scheduling_strategy=placement.strategy(bundles[r]),
        ).remote(cfg, r, t.world_size) for r in range(t.world_size)]
        addr, port = get(self.ranks[0].address.remote())
        get([r.setup.remote(addr, port, init_path, ref_path) for r in self.ranks])

    def train_step(self, shards: list[dict], global_norm: float) -> list[dict]:
        return get([r.train_step.remote(s, global_norm) for r, s in zip(self.ranks, shards)])

    def weights(self) -> bytes:
        return get([r.state_dict_bytes.remote() for r in self.ranks])[0]

    def save_state(self, directory: str, step: int) -> None:
        get([r.save_state.remote(directory, step) for r in self.ranks])

    def load_state(self, directory: str, tag: str) -> int:
        return get([r.load_state.remote(directory, tag) for r in self.ranks])[0]

    def save_hf(self, directory: str, tokenizer_from: str) -> None:
        get([r.save_hf.remote(directory, tokenizer_from) for r in self.ranks])

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r)
        if self.own_placement:
            self.placement.remove()
