"""Run every benchmark, one after the other (they each want both cores), into benchmarks/results/."""

import subprocess
import sys

BENCHMARKS = ["rollout_throughput", "influence_engine", "rank_preservation", "selection_pool", "trainer_step",
              "weight_sync", "phase_startup", "baselines"]

if __name__ == "__main__":
    failed = []
    for name in sys.argv[1:] or BENCHMARKS:
        print(f"== benchmarks.{name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"]).returncode:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {failed}")
