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
import sys


def job_parser(prog: str) -> argparse.ArgumentParser:
    """The arguments every job entry point takes."""
    ap = argparse.ArgumentParser(prog=f"python -m ray_jobs.{prog}")
    ap.add_argument("--config", required=True, help="YAML config")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--verbose", action="store_true", help="also show the engines' own logs")
    return ap


def cli_args(args: argparse.Namespace) -> list[str]:
    """The parsed common arguments as `cropi` CLI arguments, with --job."""
    return [args.config, "--job", *(x for o in args.overrides for x in ("--set", o)),
            *(["--verbose"] if args.verbose else [])]


def main(argv: list[str] | None = None, method: str = "cropi") -> int:
    """`cropi run --job`: the CLI's own command code, so the checks and error messages are the CLI's."""
    from cropi.cli import main as cli_main
    from cropi.loop import METHODS

    ap = job_parser("cropi_loop" if method == "cropi" else f"baseline_{method}")
    if method == "cropi":
        ap.add_argument("--method", default="cropi", choices=METHODS)
    args = ap.parse_args(argv)
    return cli_main(["run", *cli_args(args), "--method", getattr(args, "method", method)])


if __name__ == "__main__":
    sys.exit(main())
