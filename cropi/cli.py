"""The `cropi` command line. Every subcommand takes a config path and `--set section.field=value`.

  cropi make-base-model CONFIG     build the tiny tokenizer + model and warm-start it
  cropi rollout CONFIG             build the offline trajectory buffer
  cropi influence CONFIG --phase M gradient actors score every prompt against theta_M
  cropi select CONFIG --phase M    select phase M's subset from its influence output
  cropi train CONFIG --phase M     one GRPO phase on the phase's selection
  cropi plan CONFIG [--cluster S]  fit, placement and cost of every stage (run refuses what does not fit or place)
  cropi run CONFIG [--method M]    the whole loop: buffer, then per phase influence, select, train
  cropi compare CONFIG --methods A B --seeds 0 1 2   arms x seeds under run.dir, then the report
  cropi compare-report ROOT [--out DIR]  the comparison's report (curves, table, intervals)
  cropi status RUN_DIR / cropi report RUN_DIR
  cropi config-reference           print the config reference (markdown) from the dataclasses

Over 300 lines: one short function per subcommand and the parser that lists them all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cropi import preempt
from cropi.errors import CropiError
from cropi.loop import METHODS, run_loop
from cropi.config import load_config, reference_markdown
from cropi.model.hub import resolve
from cropi.data.suite import load_data
from cropi.ray_utils import ray_session
from cropi.store.paths import RunPaths, phase_start_checkpoint
from cropi.store.selection import selected_ids
from cropi.plan import check, make_plan, parse_cluster, render, reserve_in_order
from cropi.status import run_status
from cropi.compare.arms import resolve as resolve_arms
from cropi.compare.run import run_compare
from cropi.compare.report import write_compare_report


def _with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field; repeatable")
    p.add_argument("--verbose", action="store_true",
                   help="also show the engines' own logs (vLLM, DeepSpeed, transformers); default: cropi's lines only")
    return p


def _load(args):
    """The command's config, its model.path resolved to a local directory (a hub id: once, here)."""

    return resolve(load_config(args.config, args.overrides))


def cmd_make_base_model(args) -> int:
    from cropi.data.base_model import build_base_model, read_marker

    from cropi.data.base_model import base_model_hash

    cfg = load_config(args.config, args.overrides)
    marker = read_marker(cfg.model.path)
    if marker and marker.get("config_hash") == base_model_hash(cfg) and not args.force:
        print(f"base model at {cfg.model.path} is up to date; pass rates {marker['pass_rates']}")
        return 0
    train, val = load_data(cfg)
    info = build_base_model(cfg, train, val, cfg.model.path)
    print(json.dumps({k: v for k, v in info.items() if k != "history"}, indent=2))
    return 0


def cmd_rollout(args) -> int:
    from cropi.rollout.build import build_buffer

    cfg = _load(args)
    manifest = build_buffer(cfg)
    for split, info in manifest["splits"].items():
        print(f"{split:>10}: {info['num_prompts_present']} prompts x {info['k']} = {info['num_trajectories']} "
              f"trajectories, mean reward {info['mean_reward']:.3f}, zero-advantage prompts {info['zero_advantage_prompts']}")
    mm = manifest["logprob_mismatch"]
    print(f"behavior log-prob mismatch vLLM vs HF: mean {mm['mean_abs']:.2e}, max {mm['max_abs']:.2e} "
          f"over {mm['num_tokens']} tokens")
    return 0


def cmd_train(args) -> int:
    from cropi.model.loading import check_model_dir
    from cropi.trainer.phase import run_phase

    cfg = _load(args)
    start = phase_start_checkpoint(cfg, args.phase)
    check_model_dir(start)
    pool, val = load_data(cfg)
    if args.selection == "all":
        selected = [r.prompt_id for r in pool]
    else:
        path = Path(args.selection) if args.selection else RunPaths.of(cfg).selection(args.phase)
        if not path.exists():
            raise CropiError(f"selection file {path} does not exist: run `cropi select` first, "
                             "or pass --selection FILE (or --selection all)")
        selected = selected_ids(path)
    with ray_session(cfg):
        summary = run_phase(cfg, args.phase, args.steps or cfg.trainer.steps_per_phase, pool, selected, val, start)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_influence(args) -> int:
    """The phase's [refresh ->] influence part of the loop."""
    from cropi.influence.actor import run_influence

    cfg = _load(args)
    with ray_session(cfg):
        if cfg.influence.refresh_zero_grad:
            from cropi.data.suite import load_data
            from cropi.rollout.refresh import refresh_zero_grad

            refresh_zero_grad(cfg, args.phase, load_data(cfg)[0])
        m = run_influence(cfg, args.phase)
    print(f"phase {args.phase}: {m['mode']} influence over {m['num_train_shards']} shards against {m['sets']} "
          f"in {m['seconds']} s; zero-gradient prompts {m['zero_grad_prompts']}; "
          f"KL(pi_theta || beta) on the buffer {m['kl_drift']:.4f}" + (" (STALE)" if m["buffer_stale"] else "")
          + (f"; {m['refreshed_prompts']} zero-gradient prompts re-rolled" if m.get("refreshed_prompts") else ""))
    return 0


def cmd_select(args) -> int:
    from cropi.selection.actor import run_selector

    cfg = _load(args)
    pool, _ = load_data(cfg)
    with ray_session(cfg):
        s = run_selector(cfg, args.phase, pool)
    print(f"phase {args.phase}: selected {s['selected']} of {s['pool_size']} prompts "
          f"({s['zero_grad']} with zero gradient) by {s['fusion']} over {s['sets']} in {s['seconds']} s")
    fam = s["composition"]["family"]
    for name, c in fam.items():
        print(f"  {name:>12}: {c['selected']:5d} selected = {c['selected_frac']:6.1%} of the selection "
              f"(pool share {c['pool_frac']:6.1%}, zero-gradient {c['zero_grad']})")
    return 0


def cmd_run(args) -> int:
    """The whole loop (or a baseline) on local Ray or the cluster at RAY_ADDRESS, then the report."""
    import time

    from cropi.entry import check_launch, load
    from cropi.report import write_report

    cfg = load(args.config, args.overrides, job=args.job)
    check_launch(cfg, [args.method])
    preempt.install(cfg.run.preempt_grace_s)
    t0 = time.time()
    result = run_loop(cfg, args.method)
    report = write_report(cfg.run.dir)
    print(json.dumps({**result, "wall_seconds": round(time.time() - t0, 1), "report": str(report)}, indent=2))
    return 0


def cmd_plan(args) -> int:
    """Fit, placement and cost of every stage on a cluster shape; exit 2 if it does not fit or place."""

    cfg = _load(args)
    cluster = parse_cluster(args.cluster) if args.cluster else None
    plan = make_plan(cfg, cluster, args.method, args.pool_size or None)
    if args.reserve:  # the same placement groups, made for real on the Ray cluster (or a local head)
        from cropi.ray_utils import ray_session

        with ray_session(cfg):
            plan["reserved"] = reserve_in_order(cfg, args.method)
    print(json.dumps(plan, indent=2) if args.json else render(plan))
    if args.reserve and not args.json:
        print("\nreserved on Ray: " + ", ".join(f"{r['stage']} {'ok' if r['placed'] else 'NOT PLACED'}"
                                              for r in plan["reserved"]))
    check(plan)
    if args.reserve and not all(r["placed"] for r in plan["reserved"]):
        raise CropiError(f"{next(r['stage'] for r in plan['reserved'] if not r['placed'])}: its placement group "
                         "was not placed on the Ray cluster (see above)")
    return 0


def cmd_demo(args) -> int:
    """What `make demo` runs: the base model's pass rates, then the whole CROPI loop and its report."""
    from cropi.data.base_model import read_marker

    cfg = _load(args)
    from cropi.model.loading import check_model_dir

    check_model_dir(cfg.model.path)
    marker = read_marker(cfg.model.path) or {}
    print(f"base model {cfg.model.path}: {marker.get('num_parameters', '?')} parameters, pass rates "
          + " ".join(f"{k}={v:.3f}" for k, v in (marker.get("pass_rates") or {}).items()))
    args.method = "cropi"
    return cmd_run(args)


def cmd_status(args) -> int:
    print(run_status(args.run_dir))
    return 0


def cmd_report(args) -> int:
    from cropi.report import write_report

    print(f"wrote {write_report(args.run_dir)}")
    return 0


def cmd_compare(args) -> int:
    overrides = list(args.overrides)
    if args.job:  # each arm's config is rebuilt from file + overrides: pin what the job's checks decided
        from cropi.entry import load

        cfg = load(args.config, overrides, job=True)
        overrides += [f"model.path={cfg.model.path}", f"data.reward_fn={cfg.data.reward_fn}",
                      f"resources.ray_address={cfg.resources.ray_address}"]
        if not cfg.data.synthetic:
            overrides += [f"data.train_path={json.dumps(cfg.data.train_path)}", f"data.val_paths={json.dumps(cfg.data.val_paths)}"]

    preempt.install(load_config(args.config, overrides).run.preempt_grace_s)
    root = run_compare(args.config, overrides, resolve_arms(args.methods), args.seeds,
                       log=lambda *x: print(*x, flush=True))
    if not args.no_report:
        from cropi.compare.report import write_compare_report

        print(f"wrote {write_compare_report(root, args.out or None)}")
    return 0


def cmd_compare_report(args) -> int:
    print(f"wrote {write_compare_report(Path(args.root), args.out or None)}")
    return 0


def cmd_config_reference(args) -> int:
    print(reference_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cropi", description="CROPI: influence-guided data selection for RLVR on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    p = _with_config(sub.add_parser("make-base-model", help="build and warm-start the tiny base model"))
    p.add_argument("--force", action="store_true", help="rebuild even if an up-to-date model exists")
    p.set_defaults(fn=cmd_make_base_model)
    p = _with_config(sub.add_parser("rollout", help="build the offline trajectory buffer (vLLM workers on Ray)"))
    p.set_defaults(fn=cmd_rollout)
    p = _with_config(sub.add_parser("influence", help="per-prompt off-policy gradients for phase M (GradientActors)"))
    p.add_argument("--phase", type=int, required=True)
    p.set_defaults(fn=cmd_influence)
    p = _with_config(sub.add_parser("select", help="score, fuse and select phase M's subset (Selector actor)"))
    p.add_argument("--phase", type=int, required=True)
    p.set_defaults(fn=cmd_select)
    p = _with_config(sub.add_parser("train", help="run one GRPO phase on a selection (DeepSpeed ranks + vLLM on Ray)"))
    p.add_argument("--phase", type=int, required=True, help="phase M: starts from phase M-1's checkpoint")
    p.add_argument("--steps", type=int, default=0, help="GRPO steps E (default trainer.steps_per_phase)")
    p.add_argument("--selection", default="", help="selection Parquet (prompt_id, selected), or 'all'; "
                   "default RUN_DIR/phase-M/selection.parquet")
    p.set_defaults(fn=cmd_train)
    p = _with_config(sub.add_parser("run", help="the whole CROPI loop (or a baseline) as one Ray job"))
    p.add_argument("--method", default="cropi", choices=METHODS,
                   help="cropi (influence-guided), full (whole pool) or random (random alpha per phase)")
    p.add_argument("--job", action="store_true", help=argparse.SUPPRESS)  # set by ray_jobs/: inside a Ray job
    p.set_defaults(fn=cmd_run)
    p = _with_config(sub.add_parser("plan", help="fit, placement and cost of every stage, before launch"))
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--cluster", default="", metavar="NxGxTYPE",
                   help="cluster shape, e.g. 1x8xH100-80GB or 4x8xH100-80GB:cpus=128 (default: this machine)")
    p.add_argument("--method", default="cropi", choices=METHODS, help="the loop whose stages are planned")
    p.add_argument("--pool-size", type=int, default=0, help="training prompts, for the cost (default: counted from "
                   "data.train_path, or the synthetic train_size)")
    p.add_argument("--reserve", action="store_true", help="also create every stage's placement group in order on the "
                   "Ray cluster (RAY_ADDRESS / resources.ray_address, else a local head): reservations only, no actors")
    p.set_defaults(fn=cmd_plan)
    p = _with_config(sub.add_parser("demo", help="the tiny demo: base model pass rates, then cropi run"))
    p.set_defaults(fn=cmd_demo)
    p = _with_config(sub.add_parser("compare", help="CROPI against the cheap selections: arms x seeds, then the report"))
    p.add_argument("--methods", nargs="+", default=["main"], metavar="ARM",
                   help="arms (cropi.compare.arms): full dynamic random filtered difficulty cropi cropi-projected "
                   "cropi+dynamic cropi+drift and the ablations; 'main' and 'ablations' name groups")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S")
    p.add_argument("--out", default="", help="report folder (default RUN_DIR/report)")
    p.add_argument("--no-report", action="store_true", help="run the arms only")
    p.add_argument("--job", action="store_true", help=argparse.SUPPRESS)  # set by ray_jobs/: inside a Ray job
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("compare-report", help="write a comparison's report from its run directories")
    p.add_argument("root", help="the comparison's run.dir")
    p.add_argument("--out", default="", help="report folder (default ROOT/report)")
    p.set_defaults(fn=cmd_compare_report)
    p = sub.add_parser("status", help="print where a run stands")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("report", help="write PNG plots and a markdown summary under RUN_DIR/report")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("config-reference", help="print the config reference as markdown")
    p.set_defaults(fn=cmd_config_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        from cropi.logs import set_verbose

        set_verbose(True)
    try:
        return args.fn(args)
    except CropiError as e:
        print(f"cropi: error: {e}", file=sys.stderr)
        return 2
    except preempt.Preempted as e:
        print(f"cropi: preempted (SIGTERM): stopped at {e.where}; its actors were released. Rerun the same "
              f"command to resume from there.", file=sys.stderr)
        return preempt.EXIT_CODE
    except OSError as e:
        from cropi.errors import STORAGE_ERRNOS, storage_error

        if e.errno not in STORAGE_ERRNOS:
            raise
        print(f"cropi: error: {storage_error(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
