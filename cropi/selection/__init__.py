"""The selector (CROPI steps 4-5): influence shards in, one phase's training subset out.

scoring.py  validation targets, cosine scores, per-set ranks       (pure numpy)
fusion.py   RRF / top-n / max fusion and the top-alpha cut          (pure numpy)
reader.py   the gradient actors' shards, read in bounded batches and checked
select.py   run_selection: the streaming driver the Ray actor wraps
summary.py  selection_summary.json's numbers
plot.py     one PNG: score histograms per set, family composition per phase
fake.py     fake influence directories for tests and benchmarks
"""

from cropi.selection.select import run_selection

__all__ = ["run_selection"]
