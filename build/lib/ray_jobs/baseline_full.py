"""Baseline: GRPO on the whole training pool every phase (same trainer, same steps).

    ray job submit --working-dir . -- python -m ray_jobs.baseline_full --config CONFIG --set run.dir=runs/full
"""

import sys

from ray_jobs.cropi_loop import main

if __name__ == "__main__":
    sys.exit(main(method="full"))
