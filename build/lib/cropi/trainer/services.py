"""`TrainingServices`: the vLLM engines and DeepSpeed trainer ranks of GRPO training, and the
weight link between them, started once and kept for every phase of a run (`trainer.keep_alive`).

    services = TrainingServices(cfg, start_ckpt)     # placement, engines, ranks, sync group
    services.begin_phase(phase_start_ckpt)           # ranks rebuild in place, engines get it by sync
    ...                                              # run_phase uses .engines, .group, .link
    services.close()

A new phase costs a DeepSpeed engine rebuild inside the living rank processes (weights read from
the phase's start checkpoint, fresh optimizer) and, unless the engines already hold that
checkpoint (the previous phase synced its last step, then saved it), one weight sync, instead of new actors,
imports, vLLM start-up and process groups. The start weights come from the checkpoint on disk,
exactly as a fresh start (or a rerun after a crash) reads them, so a kept-alive run and a resumed
one train from the same values.
"""

from __future__ import annotations

import time
from pathlib import Path

DEATH_HINT = "rerun the same command to resume from the last DeepSpeed checkpoint (finished phases are kept)"


def engines_first(cfg) -> bool:
    """Start the engines, and wait until they are up, before the trainer ranks load: on a GPU
    shared with a rank (cropi.config.colocated_gpu), vLLM measures the device's free memory while
    it starts, and a rank allocating beside it then would shrink its KV cache or fail its check
    that the free memory covers gpu_memory_utilization. Elsewhere both start at once (faster)."""
    return cfg.colocated_gpu()


class TrainingServices:
    def __init__(self, cfg, start_ckpt: str, tag: str = "run"):
        from cropi.placement import training_placement
        from cropi.rollout.engine import sleeps
        from cropi.rollout.engine_actor import engine_pool
        from cropi.sync.link import WeightLink
        from cropi.trainer.group import TrainerGroup

        self.cfg, self.engines, self.group, self.link = cfg, None, None, None
        self.sleeps = sleeps(cfg)  # GPU colocation: engines sleep while the ranks step
        t0 = time.time()
        self.placement, rank_bundles, engine_bundles = training_placement(cfg)
        try:
            self.engines = engine_pool(cfg, start_ckpt, tag, self.placement, engine_bundles, on_death=DEATH_HINT)
            if engines_first(cfg):
                self.engines.each(lambda e: e.ready.remote())
            self.group = TrainerGroup(cfg, start_ckpt, str(Path(cfg.model.path).resolve()), tag=tag,
                                      placement=self.placement, bundles=rank_bundles, on_death=DEATH_HINT)
            self.link = WeightLink(cfg, self.group, self.engines)
        except BaseException:
            self.close()
            raise
        self.weights_of, self.phases, self.resting = start_ckpt, 0, False
        self.engines_hold = start_ckpt  # the checkpoint whose weights the engines hold exactly
        self.started_seconds = time.time() - t0

    def __enter__(self) -> "TrainingServices":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def begin_phase(self, start_ckpt: str) -> float:
        """Make every rank and engine hold start_ckpt with a fresh optimizer; -> seconds it took
        (the services' own start-up for the first phase they serve)."""
        self.phases += 1
        if self.resting:
            self.engines.each(lambda e: e.wake_up.remote(None))
            self.resting = False
        if self.phases == 1 and start_ckpt == self.weights_of:
            return self.started_seconds
        t0 = time.time()
        self.group.reset(start_ckpt)  # same names and shapes: the sync plan still holds
        if start_ckpt != self.engines_hold:
            self.link.push()
        self.weights_of = self.engines_hold = start_ckpt
        return time.time() - t0

    def phase_saved(self, ckpt: str) -> None:
        """A phase ended by syncing its last step and saving those same weights as ckpt: the
        engines hold ckpt exactly, and the next phase, which starts from it, needs no sync."""
        self.engines_hold = ckpt

    def rest(self) -> None:
        """Between phases on GPU (colocated): the engines sleep, so selection's gradient actors
        find their memory free; begin_phase wakes them."""
        if self.sleeps and not self.resting:
            self.engines.each(lambda e: e.sleep.remote())
            self.resting = True

    def close(self) -> None:
        if self.group is not None:
            self.group.shutdown()
        if self.engines is not None:
            self.engines.close()
        self.group = self.engines = self.link = None
        if self.placement is not None:
            self.placement.remove()
            self.placement = None
