"""What a phase keeps of its logged rows when it resumes (cropi.trainer.phase.covered): each
step exactly once, also when the driver dies before the phase's first DeepSpeed checkpoint."""

from cropi.trainer.phase import covered


def simulate(kill_after: int, save_every: int, steps: int) -> list[int]:
    """Log steps 0..kill_after, die, resume from the last checkpoint, finish: the steps logged."""
    rows = [{"step": s} for s in range(kill_after + 1)]
    step0 = max([s for s in range(1, kill_after + 1) if s % save_every == 0], default=0)
    rows = covered(rows, step0)
    if step0 == 0:
        rows.append({"step": 0})  # step 0's evaluation, redone
    rows += [{"step": s} for s in range(step0 + 1, steps + 1)]
    return [r["step"] for r in rows]


def test_every_step_once_whenever_the_kill_comes():
    for kill_after in range(0, 7):
        for save_every in (1, 2, 5, 10):
            assert simulate(kill_after, save_every, 6) == list(range(7)), (kill_after, save_every)


def test_covered_keeps_what_the_checkpoint_covers():
    rows = [{"step": s, "x": s} for s in range(5)]
    assert covered(rows, 3) == rows[:4]
    assert covered(rows, 0) == []  # before the first checkpoint: step 0 was logged and is redone
