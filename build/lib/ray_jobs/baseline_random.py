"""Baseline: GRPO on a seeded random alpha-fraction of the pool each phase.

    ray job submit --working-dir . -- python -m ray_jobs.baseline_random --config CONFIG --set run.dir=runs/random
"""

import sys

from ray_jobs.cropi_loop import main

if __name__ == "__main__":
    sys.exit(main(method="random"))
