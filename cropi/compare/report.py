"""The comparison's report, from the run directories `cropi compare` wrote (cropi.compare.run).

    OUT/report.md           the tables, the speed-ups and what held and what did not
    OUT/summary.json        every figure of report.md, per arm and seed
    OUT/curves_steps.png    gain in validation pass@1 per set (and the targeted/untargeted means) vs GRPO steps
    OUT/curves_wall.png     the targeted and untargeted mean gains vs wall time (evaluation excluded)

What is measured, per arm and seed (an arm's run directory is ROOT/seed-S/ARM):
- the evaluations of phase-M/eval.jsonl, one per `eval_every` steps, at global step M*E + s
  (step 0 of a later phase repeats the previous phase's last evaluation and is skipped);
- wall time at each evaluation: the buffer (charged to every arm that reads it, at what the
  seed's builder spent), each phase's selection stages (refresh, influence, rebuffer, select)
  and the training steps, less the time spent evaluating; engine start-up is left out (the same
  for every arm);
- pass@1 of a set: the mean over its prompts of each prompt's pass rate (eval_samples samples);
  its standard error over prompts is stated per set;
- gains are paired per prompt (final pass rate less the base model's on the same prompt), and
  arm-against-arm differences paired per prompt on the same seed's sets; intervals are the
  two-level bootstrap of cropi.compare.stats (seeds, then prompts);
- the step speed-up as the paper defines it (cropi.compare.stats.speedup) against `full`, on the
  mean of the targeted sets, per seed, and the same in wall time.

The work is split along its seams: cropi.compare.reading (the run directories, read once),
cropi.compare.summary (the numbers), cropi.compare.render (report.md and the curves) and
cropi.compare.figures (the mechanism plots).
"""

from __future__ import annotations

from pathlib import Path

from cropi.compare import figures
from cropi.compare.reading import load_runs
from cropi.compare.render import markdown, plot
from cropi.compare.summary import summarise
from cropi.store.files import write_json, write_text

__all__ = ["write_compare_report", "load_runs", "summarise", "markdown", "plot"]


def write_compare_report(root: Path, out: Path | None = None, command: str | None = None) -> Path:
    """Write report.md, summary.json and the curves for ROOT; returns report.md's path."""
    root = Path(root)
    out = Path(out) if out else root / "report"
    loaded = load_runs(root)
    s = summarise(root, loaded)
    if command is None:
        command = (f"cropi compare {s['config']} --methods {' '.join(s['arms'])} --seeds {' '.join(map(str, s['seeds']))}"
                   + "".join(f" --set {o}" for o in s["overrides"]))
    out.mkdir(parents=True, exist_ok=True)
    plot(s, loaded[1], out)
    figures.plot_mechanism(root, s, loaded[4]["label"], loaded[4]["family"], out)
    write_json({**s, "command": command}, out / "summary.json")
    return write_text(markdown(s, command), out / "report.md")
