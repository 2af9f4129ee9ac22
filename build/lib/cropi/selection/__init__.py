"""The selector (CROPI steps 4-5): influence shards in, one phase's training subset out.

scoring.py  validation targets, cosine scores, per-set ranks       (pure numpy)
fusion.py   RRF / top-n / max fusion, the top-alpha cut, n_select   (pure numpy)
select.py   run_selection: the streaming driver the Ray actor wraps
summary.py  selection_summary.json's numbers
plot.py     one PNG: score histograms per set, family composition per phase
actor.py    the Selector actor and the phase-level call
The files it reads and writes: cropi.store.influence and cropi.store.selection.
"""

from cropi.selection.select import run_selection

__all__ = ["run_selection"]
