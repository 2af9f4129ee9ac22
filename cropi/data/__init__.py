"""Tasks, datasets and verifiable rewards, and the tiny base model warm-started on the tasks
(base_model.py)."""
