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

Where methods differ (reading the buffer, making a phase's selection) is one `Method` object per
method (`Cropi` for cropi, `Method` for the baselines; `method_of`); `_Run` holds what lives for
the run's Ray session (metrics, trackers, the kept-alive services) and times each stage.

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

Over 300 lines with this docstring (the departures from the paper belong beside the order of
stages); no function of the driver is over 60 lines.
"""

from __future__ import annotations

import contextlib
import os
import time

from cropi import preempt, seeds
from cropi.data.dataset import PromptRow
from cropi.errors import CropiError, WorkerDied
from cropi.store.paths import RunPaths, phase_start_checkpoint
from cropi.selection.baselines import NEEDS_BUFFER, baseline_selected
from cropi.store.buffer import built_with, complete_manifest, prompt_reward_stats, read_manifest
from cropi.store.selection import baseline_table, selected_ids, write_selection
from cropi.data.suite import load_data
from cropi.ray_utils import check_device, ray_session
from cropi.store import records
from cropi.store.run_record import check_run, claim_phase, record_start
from cropi.rollout.refresh import read_rebuffer_manifest, rebuffer, refresh_zero_grad
from cropi.monitor import RunMetrics
from cropi.trackers import Trackers
from cropi.trainer.services import TrainingServices

METHODS = ("cropi", "full", "random", "filtered", "difficulty")  # the CLI's --method (cropi.loop.method_of)


def _write_baseline_selection(cfg, phase: int, pool: list[PromptRow], method: str) -> None:
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

    man = read_manifest(RunPaths.of(cfg).buffer) or {}
    return bool(man.get("complete")) and built_with(cfg, man)


def with_retries(fn, retries: int, on_retry):
    """fn() again after a WorkerDied (a dead rank or engine), up to `retries` more times;
    on_retry(attempt, error) runs before each new attempt."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except WorkerDied as e:
            if attempt == retries:
                raise
            on_retry(attempt + 1, e)


class Method:
    """Where the loop's methods differ: whether they read the buffer, and how a phase's
    selection is made. One object per method; `method_of` picks it."""

    def __init__(self, name: str):
        self.name = name

    @property
    def reads_buffer(self) -> bool:
        return self.name in NEEDS_BUFFER

    def select(self, run: "_Run", m: int) -> None:
        """A baseline's selection (cropi.selection.baselines), written once per phase."""
        _write_baseline_selection(run.cfg, m, run.pool, self.name)


class Cropi(Method):
    reads_buffer = True

    def select(self, run: "_Run", m: int) -> None:
        """[refresh] -> influence -> [drift: rebuffer, influence again] -> select."""
        from cropi.selection.actor import run_selector

        cfg, paths = run.cfg, run.paths
        t_sel = time.time()
        if cfg.influence.refresh_zero_grad:
            run.stage("refresh", lambda: refresh_zero_grad(cfg, m, run.pool, run.log), m)
        if read_rebuffer_manifest(cfg, m) is not None and paths.influence(m).is_dir() and \
                not paths.influence_before_rebuffer(m).exists():
            _set_aside(paths, m)  # died between the re-roll and setting the old scores aside
        man = run.stage("influence", lambda: run.influence(m), m)
        if _drifted(cfg, m, man):
            rb = run.stage("rebuffer", lambda: rebuffer(cfg, m, run.pool, man["kl_drift"], run.log), m)
            run.metrics.event("rebuffer", phase=m, kl=rb["kl_before"], prompts=rb["prompts"])
            _set_aside(paths, m)
            man = run.stage("influence_after_rebuffer", lambda: run.influence(m), m)
        run.metrics.gauge("cropi_kl_drift", man["kl_drift"], phase=m)
        run.metrics.event("drift", phase=m, kl=man["kl_drift"], stale=man["buffer_stale"])
        if not paths.selection_summary(m).is_file():
            run.stage("select", lambda: run_selector(cfg, m, run.pool), m)
        run.metrics.gauge("cropi_selection_seconds", time.time() - t_sel, phase=m)


def method_of(name: str) -> Method:
    if name not in METHODS:
        raise CropiError(f"--method must be one of {METHODS}, got {name!r}")
    return Cropi(name) if name == "cropi" else Method(name)


class _Run:
    """One run's living parts inside its Ray session: metrics and trackers, the timed stages,
    and the services kept across phases -- the training engines and ranks (trainer.keep_alive)
    and the gradient actors (resources.influence.keep_alive), each started by the first stage
    that needs it. Closed in reverse order of start."""

    def __init__(self, cfg, pool: list[PromptRow], val, log):
        self.cfg, self.pool, self.val, self.log = cfg, pool, val, log
        self.paths = RunPaths.of(cfg)
        self.timings: dict[str, float] = {}
        self.services = None
        self.gradients = None
        self._closing = contextlib.ExitStack()  # every close runs, even after one fails
        self.metrics = RunMetrics(self.paths.root, self.paths.root.name)
        self._closing.callback(self.metrics.close)
        try:
            self.trackers = Trackers(cfg, self.paths.root)
        except BaseException:
            self._closing.close()
            raise
        self._closing.callback(self.trackers.close)
        self._closing.callback(lambda: self.services is not None and self.services.close())
        self._closing.callback(lambda: self.gradients is not None and self.gradients.close())

    def __enter__(self) -> "_Run":
        return self

    def __exit__(self, *exc) -> None:
        self._closing.close()

    def on_step(self, m: dict) -> None:
        self.metrics.on_step(m)
        self.trackers.on_step(m)

    def stage(self, name: str, fn, phase: int | None = None):
        """fn() timed as one stage: a preemption point before it, its seconds and start-up in the
        metrics and events."""
        t0 = time.time()
        try:
            preempt.check(f"the start of stage {name}" + ("" if phase is None else f" of phase {phase}"))
            out = fn()
        except preempt.Preempted as e:
            self.metrics.event("preempted", stage=name, phase=phase, where=e.where)
            raise
        dt = time.time() - t0
        self.timings[name if phase is None else f"phase{phase}/{name}"] = round(dt, 2)
        self.metrics.gauge("cropi_stage_seconds", dt, phase="none" if phase is None else phase, stage=name)
        startup = out.get("startup_seconds") if isinstance(out, dict) else None
        self.metrics.event("stage", stage=name, phase=phase, seconds=round(dt, 2),
                           **({"startup_seconds": round(min(float(startup), dt), 2)} if startup is not None else {}))
        return out

    def buffer(self) -> None:
        from cropi.rollout.build import build_buffer

        if _buffer_complete(self.cfg):  # checked again (cheap), but not timed as building it
            t0 = time.time()
            build_buffer(self.cfg, progress=False, log=self.log, data=(self.pool, self.val))
            self.log(f"buffer: complete, skipped (checked in {time.time() - t0:.1f} s)")
        else:
            self.stage("buffer", lambda: build_buffer(self.cfg, log=self.log, data=(self.pool, self.val)))

    def influence(self, m: int) -> dict:
        from cropi.influence.actor import gradient_pool, run_influence

        if self.cfg.resources.influence.keep_alive and self.gradients is None:  # inside the stage: timed there
            self.gradients = gradient_pool(self.cfg, phase_start_checkpoint(self.cfg, m))
        return run_influence(self.cfg, m, self.log, pool=self.gradients)

    def train(self, m: int) -> dict:
        """GRPO for the phase's E steps on its selection; a dead rank or engine redoes the stage in
        this job (run.max_stage_retries) from the phase's last DeepSpeed checkpoint."""
        from cropi.trainer.phase import run_phase

        cfg, start = self.cfg, phase_start_checkpoint(self.cfg, m)

        def attempt():
            if cfg.trainer.keep_alive and self.services is None:  # started inside the stage: timed there
                self.services = TrainingServices(cfg, start)
            return run_phase(cfg, m, cfg.trainer.steps_per_phase, self.pool, selected_ids(self.paths.selection(m)),
                             self.val, start, self.log, on_step=self.on_step, services=self.services)

        def again(n: int, e: WorkerDied) -> None:
            retries = cfg.run.max_stage_retries
            self.metrics.event("stage_retry", phase=m, stage="train", attempt=n, of=retries, error=str(e))
            self.log(f"phase {m}: {e.args[0].split(';')[0]}; redoing the training stage in this job "
                     f"(attempt {n} of {retries}) from its last DeepSpeed checkpoint")
            if self.services is not None:
                self.services.close()
                self.services = None

        return with_retries(attempt, cfg.run.max_stage_retries, again)

    def phase(self, m: int, method: Method) -> None:
        self.metrics.gauge("cropi_phase", m)
        if self.paths.phase_done(m):
            self.log(f"phase {m}: complete, skipped")
            return
        claim_phase(self.cfg, m, method.name)
        method.select(self, m)
        sel = records.read_if(records.SELECTION_SUMMARY, self.paths.selection_summary(m))
        if sel:
            self.trackers.on_selection(m, sel)
        summary = self.stage("train", lambda: self.train(m), m)
        if self.services is not None:
            self.services.rest()
        self.metrics.event("phase_done", **{k: v for k, v in summary.items() if k != "checkpoint"})

    def report(self) -> None:
        if self.trackers.open:  # the report's plots, while the trackers are open (the faces write it again)
            from cropi.report import write_report

            self.trackers.on_report(write_report(self.paths.root).parent, self.cfg.run.num_phases)


def run_loop(cfg, method: str = "cropi", log=print) -> dict:
    """The whole run of `method` (cropi or a baseline), resumed from whatever is complete."""
    from cropi.model.loading import check_model_dir

    strategy = method_of(method)
    check_device(cfg)  # before the run record is written: a bad device leaves nothing behind
    check_model_dir(cfg.model.path)
    pool, val = load_data(cfg)
    paths = RunPaths.of(cfg)
    check_run(cfg, method)  # refuse another method or a changed config before anything runs
    record_start(cfg, method)
    with ray_session(cfg, dashboard=True):
        if os.environ.get("RAY_ADDRESS") or cfg.resources.ray_address:
            from cropi.plan import check_live_placement

            check_live_placement(cfg, method)  # every stage, in order, onto the nodes of the cluster joined
        with _Run(cfg, pool, val, log) as run:
            if strategy.reads_buffer:
                run.buffer()
            for m in range(cfg.run.num_phases):
                run.phase(m, strategy)
            run.report()
    result = {"method": method, "run_dir": str(paths.root), "stage_seconds": run.timings,
              "final_checkpoint": str(paths.checkpoint(cfg.run.num_phases - 1))}
    records.write(records.RUN_RESULT, result, paths.run_result)
    return result
