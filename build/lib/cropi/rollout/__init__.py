"""The offline trajectory buffer: vLLM rollout workers (Ray actors) writing Parquet shards."""
