"""Trainer -> vLLM weight sync by collective broadcast (`trainer.sync: broadcast`).

    buckets.py   which tensors travel together: a layout of fixed-size buckets, flatten/unflatten
    channel.py   the process group of trainer rank 0 and every vLLM worker: rendezvous, timeouts,
                 errors that name the peer that did not answer
    sender.py    trainer side: stream the parameters bucket by bucket (ZeRO-3 gathers one bucket)
    export.py    full weights out of a DeepSpeed engine (ZeRO gathers), for the sync and for the
                 trainer's Hugging Face checkpoints

The receiving side is the vLLM worker extension, cropi.rollout.weight_sync. The object-store
path (`trainer.sync: object_store`: one safetensors blob through Ray) is the fallback.
"""
