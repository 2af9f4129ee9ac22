"""`cropi plan --cluster`: placement of every stage in the loop's order beside what keep_alive
holds, the memory of the actors sharing a device, the cost model, and the same placement groups
made on a real Ray head with fake GPUs."""

import json

import pytest

from cropi.config import load_config
from cropi.errors import CropiError
from cropi.plan import GIB, ModelShape, check, make_plan, parse_cluster, reserve_in_order, simulate, stages_of
from cropi.plan.memory import actor_parts
from tests.test_plan import QWEN25_15B

QWEN25_7B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
             "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
             "max_position_embeddings": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
PAPER, MULTI = "configs/qwen2.5-1.5b-8gpu.yaml", "configs/multinode-4x8gpu.yaml"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for name, conf in (("1.5b", QWEN25_15B), ("7b", QWEN25_7B)):
        d = tmp_path_factory.mktemp(name)
        (d / "config.json").write_text(json.dumps(conf))
        out[name] = d
    return out


def _plan(path, model, cluster, *overrides, method="cropi"):
    cfg = load_config(path, [f"model.path={model}", *overrides])
    return cfg, make_plan(cfg, parse_cluster(cluster), method)


def test_shipped_gpu_configs_plan_as_placeable_and_fit(models):
    for path, model, cluster in ((PAPER, models["1.5b"], "1x8xH100-80GB"), (MULTI, models["7b"], "4x8xH100-80GB")):
        cfg, plan = _plan(path, model, cluster)
        check(plan)  # fits and places
        rows = plan["placement"]
        assert [r["stage"] for r in rows][:4] == ["buffer", "phase 0 influence", "phase 0 select", "phase 0 train"]
        assert all(r["placed"] for r in rows) and len(rows) == 1 + 3 * cfg.run.num_phases
        assert {r["gpus"] for r in rows if r["stage"].endswith("influence")} == {cfg.resources.influence.num_actors}


def test_keep_alive_beside_the_next_phases_influence_is_refused_naming_the_stage(models):
    # the training placement keeps its 6 + 2 GPUs (24 + 4 x 2 on 4 nodes); phase 1's influence asks for all of them
    for path, model, cluster, held in ((PAPER, models["1.5b"], "1x8xH100-80GB", "8 GPU"),
                                       (MULTI, models["7b"], "4x8xH100-80GB", "32 GPU")):
        _, plan = _plan(path, model, cluster, "trainer.keep_alive=true")
        assert [r["stage"] for r in plan["placement"] if not r["placed"]] == ["phase 1 influence"]
        with pytest.raises(CropiError, match=rf"phase 1 influence: .* while phase 0 train \({held}, .*\) stays "
                                             r"reserved \(kept alive\); set trainer\.keep_alive=false"):
            check(plan)
        # kept-alive gradient actors, which take every GPU, leave none for training
        _, plan = _plan(path, model, cluster, "resources.influence.keep_alive=true")
        assert [r["stage"] for r in plan["placement"] if not r["placed"]] == ["phase 0 train"]
        with pytest.raises(CropiError, match=rf"phase 0 train: .* while phase 0 influence \({held}, .*\) stays "
                                             r"reserved \(kept alive\); set resources\.influence\.keep_alive=false"):
            check(plan)
    # 8 more GPUs make room for it
    _, plan = _plan(PAPER, models["1.5b"], "2x8xH100-80GB", "trainer.keep_alive=true")
    check(plan)


def test_a_stage_larger_than_the_idle_cluster_names_it_and_its_fields(models):
    _, plan = _plan(PAPER, models["1.5b"], "1x8xH100-80GB", "resources.influence.num_actors=9")
    with pytest.raises(CropiError, match=r"phase 0 influence: 9 bundles need 9 GPU in all and the cluster has 8 "
                                         r"\(1x8xH100-80GB\); lower resources\.influence\.num_actors"):
        check(plan)
    with pytest.raises(CropiError, match=r"--cluster '8xH100': expected NODESxGPUSxTYPE"):
        parse_cluster("8xH100")
    with pytest.raises(CropiError, match=r"unknown GPU 'B300-1TB'"):
        parse_cluster("1x8xB300-1TB")


def test_buffer_writer_counts_its_hf_model_beside_vllm(models):
    """7B: vLLM's 0.85 x 80 GiB share plus the 15 GiB recompute model does not fit: the first shard
    would run out of memory while the old plan passed."""
    cfg, plan = _plan(MULTI, models["7b"], "4x8xH100-80GB", "resources.rollout.gpu_memory_utilization=0.85")
    w = plan["stages"]["buffer writer"]
    assert w["vllm"] == pytest.approx(0.85 * 80) and w["recompute_weights"] == pytest.approx(7.6156e9 * 2 / GIB, rel=0.01)
    with pytest.raises(CropiError, match=r"buffer writer: estimated peak 8\d\.\d GiB > 80 GiB .*rollout\.hf_recompute=false"):
        check(plan)
    check(_plan(MULTI, models["7b"], "4x8xH100-80GB", "resources.rollout.gpu_memory_utilization=0.85",
                "rollout.hf_recompute=false")[1])


def test_colocated_gpu_adds_what_shares_it(models):
    """One GPU, shared placement, kept alive: phase 1's gradient actor lands beside the resting rank
    and the sleeping engine, whose memory the old plan left out; training peaks at the worse of
    (rank steps, engine asleep) and (engine samples, rank rests)."""
    over = ["resources.placement=shared", "trainer.keep_alive=true", "trainer.world_size=1", "trainer.sync=auto",
            "resources.rollout.num_workers=1", "resources.rollout.num_train_engines=1",
            "resources.rollout.num_gpus=0.3", "resources.trainer.num_gpus=0.3", "resources.influence.num_gpus=0.4",
            "resources.influence.num_actors=1", "resources.rollout.gpu_memory_utilization=0.3",
            "influence.max_tokens_per_backward=4096", "trainer.max_tokens_per_micro_batch=4096"]
    cfg, plan = _plan(PAPER, models["1.5b"], "1x1xH100-80GB", *over)
    parts = {k: sum(v.values()) / GIB for k, v in actor_parts(cfg, ModelShape.of(str(models["1.5b"])), 80).items()}
    rows = {r["stage"]: r for r in plan["placement"]}
    inf1 = rows["phase 1 influence"]["fit"]
    assert sorted(inf1["actors"]) == ["gradient actor", "rollout worker (asleep)", "trainer rank (resting)"]
    assert inf1["gib"] == pytest.approx(parts["gradient actor"] + parts["rollout worker (asleep)"]
                                        + parts["trainer rank (resting)"], abs=0.01)
    train = rows["phase 0 train"]["fit"]
    want = max(parts["trainer rank"] + parts["rollout worker (asleep)"],
               parts["trainer rank (resting)"] + parts["rollout worker"])
    assert train["gib"] == pytest.approx(want, abs=0.01)
    assert cfg.sync_mode() == "ipc"
    check(plan)
    # more micro-batch tokens: the colocated rank's step no longer fits beside the sleeping engine
    _, big = _plan(PAPER, models["1.5b"], "1x1xH100-80GB", *over, "trainer.max_tokens_per_micro_batch=200000",
                   "trainer.gradient_checkpointing=false")
    with pytest.raises(CropiError, match=r"phase 0 train: node 0 GPU 0 holds .*trainer rank.*GiB > 80"):
        check(big)


def test_fractional_bundles_share_a_gpu_and_whole_ones_do_not(models):
    cfg = load_config(PAPER, [f"model.path={models['1.5b']}"])
    stages = stages_of(cfg)
    assert [s.kind for s in stages[:4]] == ["buffer", "influence", "select", "train"]
    train = stages[3]
    assert len(train.bundles) == 8 and sum(b.gpus for b in train.bundles) == 8
    verdict = simulate(cfg, parse_cluster("1x8xH100-80GB"), None)
    assert verdict.ok and verdict.stages[3]["gpus"] == 8
    # baselines ask for no influence or selection; `full` needs no buffer either
    assert [s.kind for s in stages_of(cfg, "full")] == ["train"] * cfg.run.num_phases
    assert stages_of(cfg, "difficulty")[0].kind == "buffer"


@pytest.fixture(scope="module")
def fake_gpu_head():
    """A local Ray head that declares 8 GPUs it does not have: placement groups only, no actors."""
    import ray

    ray.init(num_cpus=96, num_gpus=8, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.integration
def test_real_ray_placement_agrees_with_the_simulation(models, fake_gpu_head):
    cfg = load_config(PAPER, [f"model.path={models['1.5b']}", "run.num_phases=2"])
    assert all(r["placed"] for r in reserve_in_order(cfg, timeout_s=20))
    assert simulate(cfg, parse_cluster("1x8xH100-80GB:cpus=96"), None).ok
    kept = load_config(PAPER, [f"model.path={models['1.5b']}", "run.num_phases=2", "trainer.keep_alive=true"])
    rows = reserve_in_order(kept, timeout_s=3)
    assert [r["stage"] for r in rows if not r["placed"]] == ["phase 1 influence"]
    assert simulate(kept, parse_cluster("1x8xH100-80GB:cpus=96"), None).stages[-1] == \
        {"stage": "phase 1 influence", "placed": False}
    import time

    import ray

    deadline = time.monotonic() + 20  # removal is asynchronous: every reservation is given back
    while ray.available_resources().get("GPU") != 8 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU") == 8


def test_cli_plan_prints_fit_placement_and_cost(models, capsys):
    from cropi.cli import main

    assert main(["plan", PAPER, "--set", f"model.path={models['1.5b']}", "--cluster", "1x8xH100-80GB"]) == 0
    out = capsys.readouterr().out
    for text in ("Fit: one actor of each kind", "Placement and fit per stage", "| phase 4 train | yes |",
                 "Cost (estimated seconds", "selection / training per phase:", "the paper measured 0.77"):
        assert text in out, text
    assert main(["plan", PAPER, "--set", f"model.path={models['1.5b']}", "--cluster", "1x8xH100-80GB",
                 "--set", "trainer.keep_alive=true"]) == 2
    assert "phase 1 influence" in capsys.readouterr().err


def test_kept_alive_gradient_actors_are_placed_once_and_checked_at_work_in_every_phase(models):
    # 16 GPUs: the 8 gradient actors and the 6 + 2 training GPUs are both held
    cfg, plan = _plan(PAPER, models["1.5b"], "2x8xH100-80GB", "resources.influence.keep_alive=true")
    check(plan)
    rows = {r["stage"]: r for r in plan["placement"]}
    assert "held" not in rows["phase 0 influence"] and rows["phase 1 influence"]["held"]
    assert rows["phase 1 influence"]["gpus"] == cfg.resources.influence.num_actors
    # later phases' scoring runs beside the resting training actors: their states are counted
    fit = rows["phase 1 influence"]["fit"]
    assert "gradient actor" in fit["actors"], fit
    train_fit = rows["phase 0 train"]["fit"]
    assert all(a != "gradient actor" for a in train_fit["actors"])  # released while training runs
