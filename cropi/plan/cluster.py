"""The cluster a plan is made for: nodes, their CPUs and GPUs, and what one device can do.

    --cluster 1x8xH100-80GB              one node of 8 H100 80 GB
    --cluster 4x8xH100-80GB:cpus=128     four such nodes, 128 CPUs each (default 12 per GPU)
    (default)                            this machine: its cores, its GPUs (or none), its memory

Device figures are the vendors' published peaks (dense bf16 FLOP/s, memory bandwidth, the
intra-node GPU link per direction); what fraction of them a stage reaches is cropi.plan.cost's
business. The CPU row is measured here, not published (cropi.plan.cost.CPU_CALIBRATION).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from cropi.errors import CropiError
from cropi.placement import local_cpus
from cropi.plan.memory import device_memory_gib


@dataclass(frozen=True)
class Device:
    name: str
    memory_gib: float
    flops: float  # peak dense bf16 FLOP/s (CPU: measured effective fp32 FLOP/s)
    mem_bw: float  # bytes/s
    link_bw: float  # bytes/s between two devices of a node, one direction (NVLink, PCIe)


GPUS = {
    "H100-80GB": Device("H100-80GB", 80, 989e12, 3.35e12, 450e9),
    "H200-141GB": Device("H200-141GB", 141, 989e12, 4.8e12, 450e9),
    "A100-80GB": Device("A100-80GB", 80, 312e12, 2.04e12, 300e9),
    "A100-40GB": Device("A100-40GB", 40, 312e12, 1.56e12, 300e9),
    "L40S-48GB": Device("L40S-48GB", 48, 362e12, 0.864e12, 32e9),
}
INTER_NODE_BW = 50e9  # bytes/s per GPU between nodes (400 Gb/s InfiniBand per GPU; assumption)
CPUS_PER_GPU = 12


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: int
    memory_gib: float  # of one GPU; on a CPU-only node, its RAM


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: tuple[Node, ...]
    device: Device | None  # the GPU of every node; None: CPU-only

    @property
    def gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)


def parse_cluster(text: str) -> Cluster:
    """'NxGxTYPE[:cpus=C]' (e.g. 4x8xH100-80GB) -> Cluster."""
    m = re.fullmatch(r"(\d+)x(\d+)x([A-Za-z0-9-]+)(?::cpus=(\d+))?", text.strip())
    if not m:
        raise CropiError(f"--cluster {text!r}: expected NODESxGPUSxTYPE[:cpus=N], e.g. 1x8xH100-80GB")
    n, g, kind, cpus = int(m[1]), int(m[2]), m[3], m[4]
    if kind not in GPUS:
        raise CropiError(f"--cluster {text!r}: unknown GPU {kind!r}; known: {', '.join(GPUS)}")
    if n < 1 or g < 1:
        raise CropiError(f"--cluster {text!r}: needs at least one node and one GPU per node")
    dev = GPUS[kind]
    node = Node(float(cpus) if cpus else float(CPUS_PER_GPU * g), g, dev.memory_gib)
    return Cluster(text, (node,) * n, dev)


def local_cluster(cfg) -> Cluster:
    """This machine as the plan's cluster: what a local Ray head declares (cropi.placement.local_cpus),
    its GPUs, and the device memory the config or the machine gives."""

    gpus = 0
    if cfg.resources.device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    mem = device_memory_gib(cfg)
    dev = None
    if gpus:
        dev = next((d for d in GPUS.values() if abs(d.memory_gib - mem) < 2), Device("local GPU", mem, 312e12, 2e12, 32e9))
    return Cluster("this machine", (Node(float(local_cpus(cfg) or os.cpu_count() or 1), gpus, mem),), dev)


def ray_cluster(cfg) -> Cluster:
    """The live Ray cluster this process is connected to, as its nodes declare themselves."""
    import ray

    nodes = []
    for n in ray.nodes():
        if n.get("Alive"):
            r = n.get("Resources", {})
            nodes.append(Node(float(r.get("CPU", 0)), int(r.get("GPU", 0)), cfg.resources.device_memory_gib or
                              (device_memory_gib(cfg) if not r.get("GPU") else 80.0)))
    return Cluster("the Ray cluster", tuple(nodes), None)
