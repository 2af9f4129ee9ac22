"""The whole CROPI loop in one Ray job (single controller), and its baselines.

The path, in the order `run_loop` takes it:

    buffer (once)                          rollout.build.build_buffer     RUN_DIR/buffer/
    for each phase m:
        [refresh zero-gradient prompts]    rollout.refresh                RUN_DIR/phase-m/refresh/
        influence of every prompt          influence.actor.run_influence  RUN_DIR/phase-m/influence/
        [drift > threshold: re-roll the    rollout.refresh.rebuffer       RUN_DIR/phase-m/rebuffer/
         buffer with theta_m, score again]
        select the top alpha               selection.actor.run_selector   RUN_DIR/phase-m/selection.parquet
        GRPO for E steps                   trainer.phase.run_phase        RUN_DIR/phase-m/checkpoint/

The GRPO engines and ranks (trainer.services) start with the first phase that trains and serve
every later one (`trainer.keep_alive`): a phase rebuilds the ranks' DeepSpeed engines in place
from its start checkpoint; the engines hold it already (the last step of the previous phase synced it)
or get it by one weight sync. Likewise the gradient actors start with the first influence stage
and serve every later one (`resources.influence.keep_alive`), loading each phase's checkpoint.

Baselines, same trainer and budget (cropi.selection.baselines): `full` trains each phase on the
whole pool; `random`, `filtered` (random among prompts whose buffered rewards vary) and
`difficulty` (top p(1 - p) by buffered pass rate) on subsets of the size CROPI selects
(`selection.fusion.n_select`); the last two read the buffer, built as for CROPI.

Resume: every stage skips what is complete, at the grain it writes atomically: buffer shards,
refresh and gradient shards, the phase's selection, DeepSpeed checkpoints inside a phase, and the
phase's Hugging Face checkpoint. Rerunning the same command after the driver or any actor dies
continues from there; nothing finished is recomputed, nothing is duplicated. A rerun whose config
changes what a begun phase was computed with is refused, naming the fields (store.run_record).

Departures from the paper (arXiv 2510.26491) and the authors' release:
- `influence.mode: exact` (the default here) scores <g, v_j> / (||g|| ||v_j||) on the sampled
  coordinates with no random projection; `projected` is the paper's sparse random projection.
- Drift policy (`influence.kl_refresh_threshold`, off by default): when scoring phase m finds
  KL(pi_theta_m || beta) on the buffer above the threshold, every training prompt is re-rolled
  with theta_m (the new beta, for phase m and later phases) and phase m is scored again.
- Zero-gradient refresh (`influence.refresh_zero_grad`, off by default): prompts whose K
  buffered rewards are all equal are re-rolled with theta_m before scoring.
- The drift monitor estimates KL(pi_theta || beta) on buffer tokens with r log r - r + 1, not
  the trainer's k3 (tokens are sampled from beta; influence.objective says why).
- Fusion: RRF with k = 60 by default; the authors' script uses 1/rank within each set's top-n
  (`selection.fusion: topn`, k_rrf 0).
- Behaviour log-probs are recomputed with a Hugging Face forward (`rollout.hf_recompute`), the
  numerics the gradient engine uses; vLLM's are kept beside them.
- The selection count is ceil(alpha * N) (the authors floor it), over the whole pool.
- Validation targets use the same <= max_val_grads prompts in every phase (seeds.val_targets).
"""

from __future__ import annotations

import contextlib
import os
import time

from cropi import preempt


from cropi.data.dataset import PromptRow
from cropi.errors import CropiError, WorkerDied
from cropi.store.paths import RunPaths, phase_start_checkpoint

METHODS = ("cropi", "full", "random", "filtered", "difficulty")


def _write_baseline_selection(cfg, phase: int, pool: list[PromptRow], method: str) -> None:
    from cropi import seeds
    from cropi.selection.baselines import NEEDS_BUFFER, baseline_selected
    from cropi.store.buffer import complete_manifest, prompt_reward_stats
    from cropi.store.selection import baseline_table, write_selection

    path = RunPaths.of(cfg).selection(phase)
    if path.is_file():
        return
    ids = [r.prompt_id for r in pool]
    stats = prompt_reward_stats(complete_manifest(cfg)[0]) if method in NEEDS_BUFFER else None
    try:
        sel = baseline_selected(ids, method, cfg.selection.alpha, seeds.random_baseline(cfg.run.seed, phase), stats)
    except ValueError as e:
        raise CropiError(f"phase {phase}: {e}") from None
    write_selection(baseline_table(ids, sel), path)


def _drifted(cfg, phase: int, man: dict) -> bool:
    """The drift policy's trigger: phase M was scored on a buffer whose KL to theta_M passes the
    threshold, and that buffer was not already re-rolled with theta_M."""
    t = cfg.influence.kl_refresh_threshold
    return t > 0 and man["kl_drift"] > t and phase not in man.get("rebuffered_at", [])


def _set_aside(paths: RunPaths, m: int) -> None:
    """The scores computed on the drifted buffer: kept beside the new ones, for the record."""
    import shutil

    idir, old = paths.influence(m), paths.influence_before_rebuffer(m)
    if old.exists():
        shutil.rmtree(old)
    idir.rename(old)


def _buffer_complete(cfg) -> bool:
    """The buffer of this config is already built (a resumed run)."""
    from cropi.store.buffer import built_with, read_manifest

    man = read_manifest(RunPaths.of(cfg).buffer) or {}
    return bool(man.get("complete")) and built_with(cfg, man)


def run_loop(cfg, method: str = "cropi", log=print) -> dict:
    from cropi.data.suite import load_data
    from cropi.influence.actor import gradient_pool, run_influence
    from cropi.model.loading import check_model_dir
    from cropi.monitor import RunMetrics
    from cropi.ray_utils import check_device, ray_session
    from cropi.rollout.build import build_buffer
    from cropi.rollout.refresh import read_rebuffer_manifest, rebuffer, refresh_zero_grad
    from cropi.selection.actor import run_selector
    from cropi.selection.baselines import NEEDS_BUFFER
    from cropi.store.files import read_json_if, write_json
    from cropi.store.run_record import check_run, claim_phase, record_start
    from cropi.trackers import Trackers
    from cropi.store.selection import selected_ids
    from cropi.trainer.phase import run_phase
    from cropi.trainer.services import TrainingServices

    if method not in METHODS:
        raise CropiError(f"--method must be one of {METHODS}, got {method!r}")
    check_device(cfg)
    check_model_dir(cfg.model.path)
    pool, val = load_data(cfg)
    paths = RunPaths.of(cfg)
    check_run(cfg, method)  # refuse another method or a changed config before anything runs
    record_start(cfg, method)
    timings: dict[str, float] = {}
    services = None  # the training engines and ranks, started by the first phase that trains
    gradients = None  # the gradient actors (resources.influence.keep_alive), started by the first influence stage
    with ray_session(cfg, dashboard=True), contextlib.ExitStack() as keep:
        if os.environ.get("RAY_ADDRESS") or cfg.resources.ray_address:
            from cropi.plan import check_live_placement

            check_live_placement(cfg, method)  # every stage, in order, onto the nodes of the cluster joined
        metrics = RunMetrics(paths.root, paths.root.name)
        keep.callback(metrics.close)
        trackers = Trackers(cfg, paths.root)
        keep.callback(trackers.close)
        keep.callback(lambda: services is not None and services.close())
        keep.callback(lambda: gradients is not None and gradients.close())

        def influence(m: int) -> dict:
            nonlocal gradients
            if cfg.resources.influence.keep_alive and gradients is None:  # inside the stage: its time counts there
                gradients = gradient_pool(cfg, phase_start_checkpoint(cfg, m))
            return run_influence(cfg, m, log, pool=gradients)

        def on_step(m: dict) -> None:
            metrics.on_step(m)
            trackers.on_step(m)

        def stage(name: str, fn, phase: int | None = None):
            t0 = time.time()
            try:
                preempt.check(f"the start of stage {name}" + ("" if phase is None else f" of phase {phase}"))
                out = fn()
            except preempt.Preempted as e:
                metrics.event("preempted", stage=name, phase=phase, where=e.where)
                raise
            dt = time.time() - t0
            timings[name if phase is None else f"phase{phase}/{name}"] = round(dt, 2)
            metrics.gauge("cropi_stage_seconds", dt, phase="none" if phase is None else phase, stage=name)
            startup = out.get("startup_seconds") if isinstance(out, dict) else None
            metrics.event("stage", stage=name, phase=phase, seconds=round(dt, 2),
                          **({"startup_seconds": round(min(float(startup), dt), 2)} if startup is not None else {}))
            return out

        if method == "cropi" or method in NEEDS_BUFFER:
            if _buffer_complete(cfg):  # checked again (cheap), but not timed as building it
                t0 = time.time()
                build_buffer(cfg, progress=False, log=log)
                log(f"buffer: complete, skipped (checked in {time.time() - t0:.1f} s)")
            else:
                stage("buffer", lambda: build_buffer(cfg, log=log))
        for m in range(cfg.run.num_phases):
            metrics.gauge("cropi_phase", m)
            if paths.phase_done(m):
                log(f"phase {m}: complete, skipped")
                continue
            claim_phase(cfg, m, method)
            if method == "cropi":
                t_sel = time.time()
                if cfg.influence.refresh_zero_grad:
                    stage("refresh", lambda: refresh_zero_grad(cfg, m, pool, log), m)
                if read_rebuffer_manifest(cfg, m) is not None and paths.influence(m).is_dir() and \
                        not paths.influence_before_rebuffer(m).exists():
                    _set_aside(paths, m)  # died between the re-roll and setting the old scores aside
                man = stage("influence", lambda: influence(m), m)
                if _drifted(cfg, m, man):
                    rb = stage("rebuffer", lambda: rebuffer(cfg, m, pool, man["kl_drift"], log), m)
                    metrics.event("rebuffer", phase=m, kl=rb["kl_before"], prompts=rb["prompts"])
                    _set_aside(paths, m)
                    man = stage("influence_after_rebuffer", lambda: influence(m), m)
                metrics.gauge("cropi_kl_drift", man["kl_drift"], phase=m)
                metrics.event("drift", phase=m, kl=man["kl_drift"], stale=man["buffer_stale"])
                if not paths.selection_summary(m).is_file():
                    stage("select", lambda: run_selector(cfg, m, pool), m)
                metrics.gauge("cropi_selection_seconds", time.time() - t_sel, phase=m)
            else:
                _write_baseline_selection(cfg, m, pool, method)
            sel = read_json_if(paths.selection_summary(m), "selection summary")
            if sel:
                trackers.on_selection(m, sel)
            start = phase_start_checkpoint(cfg, m)

            def train():
                nonlocal services
                retries = cfg.run.max_stage_retries
                for attempt in range(retries + 1):
                    try:
                        if cfg.trainer.keep_alive and services is None:  # started inside the stage: its time counts there
                            services = TrainingServices(cfg, start)
                        return run_phase(cfg, m, cfg.trainer.steps_per_phase, pool, selected_ids(paths.selection(m)),
                                         val, start, log, on_step=on_step, services=services)
                    except WorkerDied as e:
                        if attempt == retries:
                            raise
                        # a dead rank or engine: new ones, resumed from the phase's last DeepSpeed checkpoint
                        metrics.event("stage_retry", phase=m, stage="train", attempt=attempt + 1, of=retries,
                                      error=str(e))
                        log(f"phase {m}: {e.args[0].split(';')[0]}; redoing the training stage in this job "
                            f"(attempt {attempt + 1} of {retries}) from its last DeepSpeed checkpoint")
                        if services is not None:
                            services.close()
                            services = None

            summary = stage("train", train, m)
            if services is not None:
                services.rest()
            metrics.event("phase_done", **{k: v for k, v in summary.items() if k != "checkpoint"})
        if trackers.open:  # the report's plots, while the trackers are open (the faces write it again)
            from cropi.report import write_report

            trackers.on_report(write_report(paths.root).parent, cfg.run.num_phases)
    result = {"method": method, "run_dir": str(paths.root), "stage_seconds": timings,
              "final_checkpoint": str(paths.checkpoint(cfg.run.num_phases - 1))}
    write_json(result, paths.run_result)
    return result
