"""The run directory and its file formats, in one place (no Ray, no engines).

paths.py       every path and file name of a run (RunPaths), and theta_M's checkpoint
files.py       atomic writes (text, JSON, Parquet, directories), the stable hash, JSON/JSONL readers
buffer.py      the offline buffer: trajectory schema, shard names, manifest, readers
influence.py   one phase's influence output: shard schema, writer, checked readers
selection.py   selection.parquet: its one writer and one reader
run_record.py  run.json's history and phase-M/phase.json: what a resume may not change
"""
