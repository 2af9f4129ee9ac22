"""The GPU path's rules, checked where they can run without a GPU: which placements and weight-sync
paths can work (NCCL, CUDA IPC, vLLM sleep mode), the start-up order of colocated engines and
ranks, and the set-up of a GPU venv (cropi.config, cropi.trainer.services, the Makefile)."""

import subprocess

import pytest

from cropi.config import load_config
from cropi.errors import ConfigError

CUDA = ["resources.device=cuda", "resources.influence.num_gpus=1"]


def _cfg(*over):
    return load_config("configs/tiny-cpu.yaml", [*CUDA, *over])


def test_broadcast_with_two_nccl_ranks_on_one_gpu_is_refused_and_auto_takes_ipc():
    shared = ["resources.placement=shared", "resources.rollout.num_gpus=0.3", "resources.trainer.num_gpus=0.3"]
    with pytest.raises(ConfigError, match=r"trainer\.sync: broadcast with placement shared on cuda puts trainer "
                                          r"rank 0 and its colocated engine, two NCCL ranks, on one GPU"):
        _cfg(*shared, "trainer.sync=broadcast")
    assert _cfg(*shared).sync_mode() == "ipc" and _cfg(*shared, "trainer.sync=object_store").sync_mode() == "object_store"
    # split with fractional GPUs may still pack two NCCL ranks onto one GPU
    frac = ["resources.placement=split", "resources.rollout.num_gpus=0.5", "resources.trainer.num_gpus=0.5"]
    with pytest.raises(ConfigError, match=r"trainer\.sync: broadcast over NCCL needs .* distinct GPUs"):
        _cfg(*frac, "trainer.sync=broadcast")
    assert _cfg(*frac).sync_mode() == "object_store"
    whole = ["resources.placement=split", "resources.rollout.num_gpus=1", "resources.trainer.num_gpus=1"]
    assert _cfg(*whole).sync_mode() == "broadcast"
    with pytest.raises(ConfigError, match=r"trainer\.sync: ipc .* needs resources\.placement shared"):
        _cfg(*whole, "trainer.sync=ipc")
    with pytest.raises(ConfigError, match=r"ipc needs a trainer rank beside every engine: 3 engines"):
        _cfg(*shared, "trainer.sync=ipc", "trainer.world_size=2", "resources.rollout.num_train_engines=3")
    # on CPU broadcast stays the default (gloo has no such rule) and ipc runs on shared memory
    assert load_config("configs/tiny-cpu.yaml").sync_mode() == "broadcast"
    assert load_config("configs/tiny-cpu.yaml", ["trainer.sync=ipc"]).sync_mode() == "ipc"


def test_shared_placement_with_whole_gpus_is_refused():
    """Whole GPUs in one shared bundle land rank and engine on different GPUs: nothing is colocated,
    yet the engine would sleep and wake every step."""
    with pytest.raises(ConfigError, match=r"resources\.placement: shared colocates .* got 1\.0 \+ 1\.0; with whole "
                                          r"GPUs each, use placement split"):
        _cfg("resources.placement=shared", "resources.rollout.num_gpus=1", "resources.trainer.num_gpus=1")
    with pytest.raises(ConfigError, match=r"resources\.rollout\.tensor_parallel_size: must be 1 with placement shared"):
        _cfg("resources.placement=shared", "resources.rollout.num_gpus=0.4", "resources.trainer.num_gpus=0.4",
             "resources.rollout.tensor_parallel_size=2")
    with pytest.raises(ConfigError, match=r"resources\.rollout\.num_gpus: must equal resources\.rollout\.tensor_parallel_size"):
        _cfg("resources.placement=split", "resources.rollout.num_gpus=1", "resources.trainer.num_gpus=1",
             "resources.rollout.tensor_parallel_size=2")
    with pytest.raises(ConfigError, match=r"resources\.trainer\.num_gpus: must be a fraction of one GPU or a whole"):
        _cfg("resources.placement=split", "resources.rollout.num_gpus=1", "resources.trainer.num_gpus=1.5")


def test_colocated_engines_are_up_before_the_ranks_load(monkeypatch):
    """On a GPU shared with a rank, vLLM measures free memory while it starts: the ranks must not
    allocate then. Recorded with stand-ins for our own pools (no engines are started)."""
    from cropi.trainer import services

    events = []

    class Pool:
        def __init__(self, *a, **k):
            events.append("engines created")
            self.actors = []

        def each(self, call):
            events.append("engines ready")

        def close(self):
            pass

    class Group:
        def __init__(self, *a, **k):
            events.append("ranks created")

        def shutdown(self):
            pass

    class Placement:
        def remove(self):
            pass

    import cropi.placement
    import cropi.rollout.engine_actor
    import cropi.sync.link
    import cropi.trainer.group

    monkeypatch.setattr(cropi.placement, "training_placement", lambda cfg: (Placement(), [0], [0]))
    monkeypatch.setattr(cropi.rollout.engine_actor, "engine_pool", Pool)
    monkeypatch.setattr(cropi.trainer.group, "TrainerGroup", Group)
    monkeypatch.setattr(cropi.sync.link, "WeightLink", lambda *a: events.append("link"))
    colocated = _cfg("resources.placement=shared", "resources.rollout.num_gpus=0.3", "resources.trainer.num_gpus=0.3")
    services.TrainingServices(colocated, "ckpt")
    assert events == ["engines created", "engines ready", "ranks created", "link"]
    events.clear()
    services.TrainingServices(load_config("configs/tiny-cpu.yaml"), "ckpt")  # CPU: both start at once
    assert events == ["engines created", "ranks created", "link"]


def _make_n(tmp_path, *args) -> str:
    return subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'venv'}", *args], capture_output=True, text=True,
                          check=True).stdout


def test_make_setup_for_gpu_keeps_what_vllm_needs_and_rebuilds_a_cpu_venv(tmp_path):
    gpu = _make_n(tmp_path, "EXTRAS=gpu,dev")
    assert "uninstall" not in gpu and "pip check" in gpu and "rm -rf" not in gpu
    cpu = _make_n(tmp_path)
    assert "uninstall -q -y torchvision torchaudio torchcodec" in cpu and "install-torch" in cpu
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / ".installed-cpu-dev").touch()  # a venv set up for the CPU stack
    assert f"rm -rf {tmp_path / 'venv'}" in _make_n(tmp_path, "EXTRAS=gpu,dev")
    (tmp_path / "venv" / ".installed-cpu-dev").unlink()
    (tmp_path / "venv" / ".installed-gpu-dev").touch()
    assert "rm -rf" not in _make_n(tmp_path, "EXTRAS=gpu,dev")
