"""GRPO trainers: DeepSpeed ranks as Ray actors, fed by vLLM rollout workers."""
