"""Token-budgeted micro-batches: how a GRPO step's sequences are cut so memory is bounded.

Memory of a forward/backward follows the padded token count of the micro-batch (sequences x its
longest sequence), not the number of sequences. `plan` sorts each rank's sequences by length
(so neighbours pad little) and cuts them greedily into micro-batches whose padded count stays
within the budget; a sequence longer than the budget alone forms its own micro-batch. Every rank
gets the same number of micro-batches (a rank with fewer appends empty ones, which it runs as a
zero-weight pass): data-parallel ranks must enter the same number of backward collectives.
Pure Python; the driver computes the plan, the ranks follow it. The cut itself is
`model.sequences.budget_batches`, shared with the influence engine and the buffer's recompute.
"""

from __future__ import annotations

from cropi.model.sequences import budget_batches


def plan(lengths_per_rank: list[list[int]], max_tokens: int) -> list[list[list[int]]]:
    """For every rank, its micro-batches (index lists into its shard), all ranks with the same count."""
    per_rank = [budget_batches(lengths, max_tokens) for lengths in lengths_per_rank]
    count = max((len(b) for b in per_rank), default=0)
    return [b + [[] for _ in range(count - len(b))] for b in per_rank]
