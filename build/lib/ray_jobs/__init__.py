"""Entry points for `ray job submit --working-dir . -- python -m ray_jobs.<name> --config ...`."""
