"""The README's "A Ray job on one machine" block, run exactly as written (bash, from the
repository root): the job succeeds, the run is complete, and the block's log says so."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- job-block:start -->\n", 1)[1].split("<!-- job-block:end -->", 1)[0]
    return re.search(r"```bash\n(.*?)```", block, re.S).group(1)


def test_block_is_in_the_readme():
    block = readme_block()
    assert "ray start --head" in block and "ray job submit" in block and "ray stop" in block
    assert "RAY_AUTH_MODE=token" in block and "ray get-auth-token" in block


def test_readme_job_block_runs_as_written(tiny_model):
    # The block ends in `ray stop`, which stops every Ray on the machine, as it would for the user:
    # this test (slow, not in CI) must not run beside another Ray run.
    run = ROOT / "runs" / "job"
    subprocess.run(["bash", "-c", "ray stop --force"], env={**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"},
                   capture_output=True, timeout=120)
    if run.exists():
        import shutil

        shutil.rmtree(run)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block()], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    out = r.stdout + r.stderr
    try:
        assert r.returncode == 0, out[-4000:]
        assert re.search(r"Job 'cropi-job-\d+' succeeded", out), out[-4000:]  # `ray job status`
        assert "phase 0 step 2/2" in out  # the job's own step lines, followed by `ray job logs`
        res = json.loads((run / "run_result.json").read_text()) if (run / "run_result.json").exists() else None
        assert (run / "phase-0" / "checkpoint" / "model.safetensors").is_file(), res
        steps = [json.loads(x)["step"] for x in (run / "phase-0" / "train_metrics.jsonl").read_text().splitlines()]
        assert steps == [0, 1, 2]
        assert re.search(r"^[0-9a-zA-Z_\-]{16,}$", r.stdout, re.M), r.stdout[-2000:]  # ray get-auth-token printed one
    finally:
        subprocess.run(["bash", "-c", "ray stop --force"], cwd=ROOT, capture_output=True, timeout=120,
                       env={**env, "PATH": f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"})
