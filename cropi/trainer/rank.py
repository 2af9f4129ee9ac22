"""`TrainerRank`: one DeepSpeed data-parallel rank as a Ray actor (a thin shell).

The group of W ranks owns its own torch.distributed process group (gloo on CPU, NCCL on GPU),
set up from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; DeepSpeed ZeRO (stage from config) wraps
the model with the client optimizer torch AdamW (DeepSpeed's own Adam would compile
C++ on CPU). Every rank also holds the frozen reference model for the KL term.
"""

from __future__ import annotations

import os

import ray
from cropi.logs import quiet_prints


@ray.remote
class TrainerRank:
    def __init__(self, cfg, rank: int, world_size: int):
        self.cfg, self.rank, self.world = cfg, rank, world_size

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0's answer is the group's MASTER_ADDR/PORT."""
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int, init_path: str, ref_path: str) -> None:
        cfg, rank, world_size = self.cfg, self.rank, self.world
        cpu = cfg.resources.device == "cpu"
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "MASTER_ADDR": master_addr,
                           "MASTER_PORT": str(master_port), "LOCAL_RANK": str(rank) if cpu else "0"})
        if cpu:
            os.environ["DS_ACCELERATOR"] = "cpu"
        import deepspeed

        from cropi.model.loading import load_model

        with quiet_prints():  # the CPU backend's "Shared Memory Comm built successfully"
            deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")
        self.device = "cpu" if cpu else "cuda"
        self.ref = load_model(ref_path, cfg.model.dtype, self.device).eval().requires_grad_(False)
        self.engine = None
        self.reset(init_path)

    def reset(self, init_path: str) -> None:
        """(Re)build the DeepSpeed engine from the checkpoint at init_path: fresh weights and a fresh
        optimizer, as a new phase needs, in this same process (the process group, the reference
        model and every import stay). Collective."""
        import gc

        import deepspeed
        import torch

        from cropi.model.loading import load_model

        cfg, world_size = self.cfg, self.world
        if self.engine is not None:
            self.engine.destroy()
            self.engine = None
            gc.collect()
        model = load_model(init_path, cfg.model.dtype, self.device)
        model.config.use_cache = False
        if cfg.trainer.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # A step is a token-budgeted number of micro-batches that varies with the responses'
        # lengths (cropi.trainer.batching): the step function marks the accumulation boundary
        # itself (set_gradient_accumulation_boundary) and steps once, so DeepSpeed's own counters
        # say one "micro-batch" per step and no loss scaling by accumulation steps.
        ds_config = {
            "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "train_batch_size": world_size, "gradient_clipping": cfg.trainer.grad_clip,
            "zero_optimization": {"stage": cfg.trainer.zero_stage},
            "bf16": {"enabled": cfg.model.dtype == "bfloat16"}, "fp16": {"enabled": cfg.model.dtype == "float16"},
            "steps_per_print": 10**9, "wall_clock_breakdown": False,
        }
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.trainer.lr, eps=cfg.trainer.adam_eps,
                                weight_decay=cfg.trainer.weight_decay)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)

    def train_step(self, shard: dict, global_norm: float) -> dict:
        """One optimizer step; `shard` is this rank's part of the global batch."""
        from cropi.trainer.step import Accumulator, grpo_step

        out = grpo_step(Accumulator.deepspeed(self.engine), self.ref, shard, self.cfg.trainer, global_norm,
                        self.world, self.device)
        if self.cfg.colocated_gpu():
            import torch

            # the step's activations go back to the device, not to this process's cache: the engine
            # on this GPU wakes its KV cache next, at the size it had at start-up
            torch.cuda.empty_cache()
        return out

    def save_state(self, directory: str, step: int) -> None:
        """DeepSpeed checkpoint (model, optimizer, step) to resume mid-phase; collective."""
        self.engine.save_checkpoint(directory, tag=f"step-{step}", client_state={"step": step})

    def load_state(self, directory: str, tag: str) -> int:
        _, client = self.engine.load_checkpoint(directory, tag=tag)
        return int(client["step"])

    def state_dict_bytes(self) -> bytes | None:
        """Rank 0: the full weights as safetensors bytes (object-store sync); collective under
        ZeRO-3 only: below it the other ranks have nothing to do and copy nothing."""
        from cropi.sync.export import gathered, state_dict_bytes

        zero = self.cfg.trainer.zero_stage
        if self.rank == 0:
            return state_dict_bytes(self.engine, zero)
        with gathered(self.engine.module.parameters(), zero):  # ZeRO-3: take part, keep nothing
            return None

    def sync_address(self) -> tuple[str, int]:
        """Where rank 0 hosts the weight-sync group's store."""
        from cropi.sync.channel import free_port

        return ray.util.get_node_ip_address(), free_port()

    def sync_open(self, host: str, port: int, world: int, timeout_s: float, backend: str,
                  peer_names: list[str], bucket_bytes: int, store_rank: int | None = None,
                  partners: list[int] | None = None) -> None:
        """Every rank plans the buckets (ZeRO-3 gathers them in that order); a rank given a
        store_rank sends and joins the sync group (rank 0 hosts it and blocks until all joined, or
        raises naming who did not; partners are the receivers it waits for)."""
        from cropi.sync.buckets import buckets_to_json
        from cropi.sync.channel import SyncChannel
        from cropi.sync.sender import sync_buckets

        self.sync_buckets = sync_buckets(self.engine.module, bucket_bytes)
        self.channel = None
        if backend == "store" and self.device != "cpu":
            import torch

            # CUDA IPC cannot export memory of expandable segments (or needs pidfd_getfd, refused in
            # containers): the buckets this rank exports come from classic cudaMalloc blocks
            torch.cuda.memory._set_allocator_settings("expandable_segments:False")
        if store_rank is not None:
            self.channel = SyncChannel(host, port, store_rank, world, timeout_s, backend, peer_names, self.device,
                                       partners)
            if store_rank == 0:
                self.channel.publish("buckets", buckets_to_json(self.sync_buckets))

    def sync_send(self, sync_id: int) -> dict:
        """Broadcast the current weights (rank 0); under ZeRO-3 all ranks gather bucket by bucket."""
        from cropi.sync.sender import send_weights

        return send_weights(self.engine.module, self.cfg.trainer.zero_stage, self.sync_buckets, self.channel,
                            sync_id, self.device)

    def save_hf(self, directory: str, tokenizer_from: str) -> None:
        """Rank 0 writes a Hugging Face checkpoint; collective (ZeRO-3 gathers)."""
        from cropi.sync.export import gathered_state_dict, save_hf_checkpoint

        sd = gathered_state_dict(self.engine, self.cfg.trainer.zero_stage)
        if self.rank == 0:
            save_hf_checkpoint(self.engine.module, sd, directory, tokenizer_from)
