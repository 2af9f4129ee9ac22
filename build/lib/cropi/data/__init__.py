"""Tasks, datasets and verifiable rewards."""
