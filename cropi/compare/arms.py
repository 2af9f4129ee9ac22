"""The arms of a comparison: each is a loop method (cropi.loop.METHODS) and config overrides.

Every arm of a seed starts from the same base model, draws the same pool and validation sets
(run.seed), trains the same number of GRPO steps with the same trainer and is evaluated with
the same seeds, so arms differ only in what they select (and, for `dynamic`, how a batch is
filled). Subset arms select ceil(alpha * N) prompts per phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from cropi.errors import CropiError
from cropi.selection.baselines import NEEDS_BUFFER


@dataclass(frozen=True)
class Arm:
    name: str
    method: str
    overrides: tuple[str, ...] = ()
    about: str = ""

    @property
    def needs_buffer(self) -> bool:
        return self.method == "cropi" or self.method in NEEDS_BUFFER


_DYN = "trainer.dynamic_sampling=true"

ARMS = {a.name: a for a in [
    Arm("full", "full", (), "the whole pool"),
    Arm("dynamic", "full", (_DYN,), "the whole pool with DAPO dynamic sampling"),
    Arm("random", "random", (), "random alpha of the pool per phase"),
    Arm("filtered", "filtered", (), "random alpha among prompts whose buffered rewards vary"),
    Arm("difficulty", "difficulty", (), "top alpha by p(1 - p), p the buffered pass rate"),
    Arm("cropi", "cropi", ("influence.mode=exact",), "CROPI, exact scores on the sampled coordinates"),
    Arm("cropi-projected", "cropi", ("influence.mode=projected",), "CROPI, the paper's sparse random projection"),
    Arm("cropi+dynamic", "cropi", ("influence.mode=exact", _DYN), "CROPI's subset with dynamic sampling"),
    Arm("cropi+drift", "cropi", ("influence.mode=exact", "influence.kl_refresh_threshold=0.03"),
        "CROPI, buffer re-rolled with theta_M when its KL drift passes 0.03 (between the phase-1 and phase-2 drifts measured on the tiny suite)"),
    # ablations (the paper's): sparse ratio, alpha, fusion, zero-gradient refresh
    Arm("cropi-p1", "cropi", ("influence.sample_ratio=1.0",), "ablation: sparse ratio p = 1.0"),
    Arm("cropi-p0.01", "cropi", ("influence.sample_ratio=0.01",), "ablation: sparse ratio p = 0.01"),
    Arm("cropi-alpha0.05", "cropi", ("selection.alpha=0.05",), "ablation: alpha = 0.05"),
    Arm("cropi-alpha0.2", "cropi", ("selection.alpha=0.2",), "ablation: alpha = 0.2"),
    Arm("cropi-topn", "cropi", ("selection.fusion=topn", "selection.k_rrf=0"), "ablation: the authors' top-n fusion"),
    Arm("cropi-max", "cropi", ("selection.fusion=max",), "ablation: max-cosine fusion"),
    Arm("cropi+refresh", "cropi", ("influence.refresh_zero_grad=true",), "ablation: zero-gradient refresh on"),
]}

MAIN = ("full", "dynamic", "random", "filtered", "difficulty", "cropi", "cropi-projected", "cropi+dynamic",
        "cropi+drift")
ABLATIONS = ("cropi-p1", "cropi-p0.01", "cropi-alpha0.05", "cropi-alpha0.2", "cropi-topn", "cropi-max",
             "cropi+refresh")
BASELINES = ("full", "dynamic", "random", "filtered", "difficulty")


def resolve(names: list[str]) -> list[Arm]:
    """Arms by name; `main` and `ablations` name the groups above."""

    out: list[Arm] = []
    for n in names:
        group = {"main": MAIN, "ablations": ABLATIONS}.get(n, (n,))
        for g in group:
            if g not in ARMS:
                raise CropiError(f"--methods: unknown arm {g!r}; arms: {', '.join(ARMS)} (or main, ablations)")
            if ARMS[g] not in out:
                out.append(ARMS[g])
    if not out:
        raise CropiError("--methods: name at least one arm")
    return out
