"""Token-budgeted micro-batches: how a GRPO step's sequences are cut so memory is bounded.

Memory of a forward/backward follows the padded token count of the micro-batch (sequences x its
longest sequence), not the number of sequences. `plan` sorts each rank's sequences by length
(so neighbours pad little) and cuts them greedily into micro-batches whose padded count stays
within the budget; a sequence longer than the budget alone forms its own micro-batch. Every rank
gets the same number of micro-batches (a rank with fewer appends empty ones, which it runs as a
zero-weight pass): data-parallel ranks must enter the same number of backward collectives.
Pure Python; the driver computes the plan, the ranks follow it.
"""

from __future__ import annotations


def cut(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices of `lengths`, longest first, cut into micro-batches of padded size <= max_tokens
    (0: no budget, one micro-batch)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if max_tokens <= 0:
        return [order] if order else []
    batches: list[list[int]] = []
    for i in order:
        # sorted longest first: the batch's padded width is its first sequence's length
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def plan(lengths_per_rank: list[list[int]], max_tokens: int) -> list[list[list[int]]]:
    """For every rank, its micro-batches (index lists into its shard), all ranks with the same count."""
    per_rank = [cut(lengths, max_tokens) for lengths in lengths_per_rank]
    count = max((len(b) for b in per_rank), default=0)
    return [b + [[] for _ in range(count - len(b))] for b in per_rank]
