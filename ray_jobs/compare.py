"""`cropi compare` as one Ray job: the arms x seeds on the job's cluster, then the report.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m ray_jobs.compare --config configs/compare-tiny.yaml --methods main --seeds 0 1 2 [--set ...]

Each (seed, arm) is its own run directory under run.dir (cropi.compare.run); resubmitting the
same command skips the arms that finished and resumes the one that died.
"""

from __future__ import annotations

import sys

from ray_jobs.cropi_loop import cli_args, job_parser


def main(argv: list[str] | None = None) -> int:
    """`cropi compare --job`: the CLI's own command code."""
    from cropi.cli import main as cli_main

    ap = job_parser("compare")
    ap.add_argument("--methods", nargs="+", default=["main"], metavar="ARM")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S")
    args = ap.parse_args(argv)
    return cli_main(["compare", *cli_args(args), "--methods", *args.methods, "--seeds", *map(str, args.seeds)])


if __name__ == "__main__":
    sys.exit(main())
