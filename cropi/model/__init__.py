"""Models: checkpoint loading, the tokenizer, log-probs of sequences, the hub.

The warm-started tiny base model is built from the synthetic tasks, so its builder lives with
them: cropi.data.base_model. Nothing here imports cropi.data.
"""
