"""`cropi compare` as one Ray job: the arms x seeds on the job's cluster, then the report.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m ray_jobs.compare --config configs/compare-tiny.yaml --methods main --seeds 0 1 2 [--set ...]

Each (seed, arm) is its own run directory under run.dir (cropi.compare.run); resubmitting the
same command skips the arms that finished and resumes the one that died.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from cropi.compare.arms import resolve
    from cropi.compare.report import write_compare_report
    from cropi.compare.run import run_compare
    from cropi.config import load_config
    from cropi.errors import CropiError

    ap = argparse.ArgumentParser(prog="python -m ray_jobs.compare")
    ap.add_argument("--config", required=True, help="YAML config")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--verbose", action="store_true", help="also show the engines' own logs")
    ap.add_argument("--methods", nargs="+", default=["main"], metavar="ARM")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S")
    args = ap.parse_args(argv)
    if args.verbose:
        from cropi.logs import set_verbose

        set_verbose(True)
    try:
        from ray_jobs.paths import check_job_paths

        overrides = list(args.overrides)
        cfg = load_config(args.config, overrides)
        check_job_paths(cfg)
        overrides += [f"model.path={cfg.model.path}", f"data.reward_fn={cfg.data.reward_fn}"]
        if not cfg.data.synthetic:
            overrides += [f"data.train_path={cfg.data.train_path}", f"data.val_paths={json.dumps(cfg.data.val_paths)}"]
        if not cfg.resources.ray_address:
            overrides.append("resources.ray_address=auto")  # inside a Ray job: join its cluster
        root = run_compare(args.config, overrides, resolve(args.methods), args.seeds,
                           log=lambda *x: print(*x, flush=True))
        print(f"wrote {write_compare_report(root)}")
    except CropiError as e:
        print(f"cropi: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
