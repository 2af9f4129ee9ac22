"""`TrainerGroup`: W `TrainerRank` actors forming one data-parallel DeepSpeed job.

We use a plain group of Ray actors that own their process group rather than Ray Train's
TorchTrainer: the group persists across the steps of a phase while the driver interleaves
vLLM rollouts and weight sync between optimizer steps, which a TorchTrainer's single
train-loop function would have to pull through queues; and it starts faster
(benchmarks/trainer_step.py measures both). Its lifecycle is a `WorkerPool`'s.
"""

from __future__ import annotations

from cropi.placement import placement_wait
from cropi.pool import WorkerPool
from cropi.trainer.rank import TrainerRank


class TrainerGroup:
    def __init__(self, cfg, init_path: str, ref_path: str, tag: str = "0", placement=None,
                 bundles: list[int] | None = None, **kw):
        """Ranks go into `placement`'s `bundles` (cropi.placement); without one, into a group of their own."""
        w, r = cfg.trainer.world_size, cfg.resources.trainer
        self.hang_timeout_s = cfg.run.hang_timeout_s
        env = {"DS_ACCELERATOR": "cpu"} if cfg.resources.device == "cpu" else {}
        self.pool = WorkerPool(TrainerRank, lambda i: (cfg, i, w), count=w, cpus=r.num_cpus, gpus=r.num_gpus,
                               what=f"phase {tag} trainer", name=f"cropi-trainer-{tag}-rank",
                               options={"runtime_env": {"env_vars": env}}, placement=placement, bundles=bundles,
                               wait=placement_wait(cfg), fields="trainer.world_size, resources.trainer.num_cpus and num_gpus",
                               **kw)
        try:
            addr, port = self.pool.each(lambda a: a.address.remote())[0]
            self.pool.each(lambda a: a.setup.remote(addr, port, init_path, ref_path))
        except BaseException:
            self.pool.close()
            raise

    def __enter__(self) -> "TrainerGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def ranks(self) -> list:
        return self.pool.actors

    def _all(self, call, what: str) -> list:
        """call(rank) on every rank at once, bounded by run.hang_timeout_s like any collective."""
        return self.pool.each(call, timeout_s=self.hang_timeout_s, what=what)

    def train_step(self, shards: list[dict], global_norm: float) -> list[dict]:
        return self.pool.each(lambda a, s: a.train_step.remote(s, global_norm), shards,
                              timeout_s=self.hang_timeout_s, what="a training step")

    def weights(self) -> bytes:
        return self._all(lambda a: a.state_dict_bytes.remote(), "a weights read")[0]

    def reset(self, init_path: str) -> None:
        """Every rank rebuilds its DeepSpeed engine from init_path in place (a new phase)."""
        self._all(lambda a: a.reset.remote(init_path), "an engine rebuild")

    def save_state(self, directory: str, step: int) -> None:
        self._all(lambda a: a.save_state.remote(directory, step), "a DeepSpeed checkpoint save")

    def load_state(self, directory: str, tag: str) -> int:
        return self._all(lambda a: a.load_state.remote(directory, tag), "a DeepSpeed checkpoint load")[0]

    def save_hf(self, directory: str, tokenizer_from: str) -> None:
        self._all(lambda a: a.save_hf.remote(directory, tokenizer_from), "a Hugging Face checkpoint save")

    def shutdown(self) -> None:
        self.pool.close()

