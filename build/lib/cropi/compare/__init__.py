"""`cropi compare`: CROPI against the selections practitioners already use, over several seeds.

    arms.py    every arm: a loop method plus config overrides (ARMS)
    run.py     the driver: each seed's arms in fresh run directories under one root, one Ray session
    stats.py   pure statistics: standard errors, bootstrap intervals over seeds and prompts, speed-ups
    report.py  the report: curves with seed bands, a markdown table, what held and what did not
"""
