"""The whole CROPI loop as a Ray job on the cluster the job was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m ray_jobs.cropi_loop --config configs/qwen2.5-1.5b-8gpu.yaml [--set section.field=value ...]

It joins the job's cluster (never starts a local one), runs buffer -> ([refresh ->] influence -> select ->
train) per phase, writes the report, and exits 0 only when the last phase's checkpoint exists.
Resubmitting the same command resumes a run that died. Paths in the config (model.path,
run.dir, data files) must be visible to every node: shared storage or absolute paths.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None, method: str = "cropi") -> int:
    from cropi.config import load_config
    from cropi.errors import CropiError
    from cropi.loop import METHODS, run_loop
    from cropi.report import write_report

    ap = argparse.ArgumentParser(prog=f"python -m ray_jobs.{__name__.rsplit('.', 1)[-1]}")
    ap.add_argument("--config", required=True, help="YAML config")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--verbose", action="store_true", help="also show the engines' own logs")
    if method == "cropi":
        ap.add_argument("--method", default="cropi", choices=METHODS)
    args = ap.parse_args(argv)
    if args.verbose:
        from cropi.logs import set_verbose

        set_verbose(True)
    try:
        from cropi.model.hub import resolve

        from ray_jobs.paths import check_job_paths

        cfg = load_config(args.config, args.overrides)
        check_job_paths(cfg)  # relative paths inside a job's temporary working dir: refused or made absolute
        cfg = resolve(cfg)  # a hub id: resolved here, once
        if not cfg.resources.ray_address:
            cfg.resources.ray_address = "auto"  # inside a Ray job: join its cluster
        from cropi.model.loading import check_model_dir
        from cropi.plan import preflight

        check_model_dir(cfg.model.path)
        preflight(cfg, getattr(args, "method", method))  # refuse before anything launches
        result = run_loop(cfg, getattr(args, "method", method))
        result["report"] = str(write_report(cfg.run.dir))
    except CropiError as e:
        print(f"cropi: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
