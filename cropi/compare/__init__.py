"""`cropi compare`: CROPI against the selections practitioners already use, over several seeds.

    arms.py        every arm: a loop method plus config overrides (ARMS)
    run.py         the driver: each seed's arms in fresh run directories under one root, one Ray session
    stats.py       pure statistics: standard errors, bootstrap intervals over seeds and prompts, speed-ups
    reading.py     the run directories read back, once (ArmRun per seed and arm)
    summary.py     the numbers: gains, intervals, speed-ups, arm against arm, what each arm trained on
    hypotheses.py  H1-H4 judged over the seeds, the break-even point
    render.py      report.md and the validation curves
    figures.py     the mechanism plots (cosines by kind of prompt, selection against the pool)
    report.py      write_compare_report: all of the above into OUT/
"""
