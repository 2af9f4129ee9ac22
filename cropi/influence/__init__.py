"""Influence engine: per-prompt off-policy gradients g(s0) and their scores (CROPI steps 2-4).

Pure torch, no Ray: Ray actors call these functions and stay thin.

    batch, ids = trajectories.make_batch(rows, pad_id)                # TrajectoryBatch, prompt ids
    coords = coords.sample_coordinates(model, "linear", 0.1, seed)    # {layer: sorted flat indices}
    v = gradients.validation_mean_gradient(model, val_batches, coords, "float32")   # {layer: [S_l]}
    out = gradients.prompt_scores(model, batch, coords, "exact", val_grads={"add": v}, grad_dtype="float32")
        # 'dots' {set: [P]}, 'norms' [P]; cosine = dots / (norms * ||v||)
    out = gradients.prompt_scores(model, batch, coords, "projected", proj_dim=1024,
                                proj_kind="rademacher", seed=proj_seed)            # 'projected' [P, k]
        # every mode also returns 'kl' [P], 'num_tokens' [P], 'objective' [P], 'zero_grad' [P]

Additions to the planned API: mode "raw" ('grads' {layer: [P, S_l]}) for raw sampled
gradients; 'num_tokens' next to the token-mean 'kl' so the drift monitor can pool prompts by
token count (objective.buffer_drift); 'objective' = J(s0). The KL is the
importance-weighted estimator r log r - r + 1 (r = pi_theta / beta), unbiased for
KL(pi_theta || beta) on tokens sampled from beta; objective.kl_from_behavior_samples says why
not k3. Outputs come back on the CPU; all functions work inside no_grad/inference_mode.

Seeds: the coordinate seed (sample_coordinates) and the projection seed (prompt_scores) are
separate arguments; pass different derived seeds. Projections are reproducible bit for bit for a
device type (CPU and CUDA generators differ), whatever the batch split or process.

Modules: trajectories (input rows), objective (J, the KL and the drift), params (which weights), coords
(sparse sampling), layout (token grouping), capture (per-layer per-prompt gradients from hooks),
projection (seeded block-wise int8 projection), gradients (the engine: every prompt's gradient
in one backward), passes (buffer rows -> columns under a token budget), actor (the Ray stage).
The slow obvious check, one plain backward per prompt, is tests/support/reference_engine.py.
"""
