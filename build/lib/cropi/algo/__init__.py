"""Pure tensor-in/tensor-out RL math (no Ray, no DeepSpeed)."""
