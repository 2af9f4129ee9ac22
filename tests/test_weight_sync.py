"""Broadcast weight sync: bucket plans, the sync group's timeouts, and real trainer ranks streaming
into real vLLM engines (world 1 and 2, ZeRO-2 and ZeRO-3, tied embeddings)."""

import threading
import time

import pytest
import torch

from cropi.config import load_config
from cropi.sync.buckets import flatten, layout_buckets, unflatten
from cropi.sync.channel import SyncChannel, SyncTimeout, free_port


def test_bucket_plan_packs_in_order_within_budget_and_round_trips():
    shapes = [("a", (3, 4), torch.float32), ("b", (10,), torch.float32), ("big", (100,), torch.float32),
              ("c", (2,), torch.float32), ("h", (4,), torch.bfloat16), ("i", (1,), torch.bfloat16)]
    plan = layout_buckets(shapes, bucket_bytes=100)  # 25 float32
    assert [[e.name for e in b.entries] for b in plan] == [["a", "b"], ["big"], ["c"], ["h", "i"]]
    assert [b.dtype for b in plan] == ["float32"] * 3 + ["bfloat16"]
    assert plan[0].entries[1].offset == 12 and plan[0].numel == 22
    tensors = {n: torch.randn(s).to(d) for n, s, d in shapes}
    for b in plan:
        buf = flatten(b, tensors)
        assert buf.numel() == b.numel and b.nbytes == buf.numel() * buf.element_size()
        for name, view in unflatten(b, buf):
            assert torch.equal(view, tensors[name]) and view.data_ptr() >= buf.data_ptr()
    with pytest.raises(ValueError):
        layout_buckets(shapes, 0)


def _channels(world: int, join: list[int], timeout_s: float):
    """Rank 0 in this thread, ranks in `join` in threads; -> (rank 0's channel or error, peers)."""
    port, peers, errors = free_port(), {}, {}

    def peer(r):
        try:
            peers[r] = SyncChannel("127.0.0.1", port, r, world, timeout_s)
        except Exception as e:  # noqa: BLE001
            errors[r] = e

    threads = [threading.Thread(target=peer, args=(r,), daemon=True) for r in join]
    for t in threads:
        t.start()
    names = ["trainer rank 0"] + [f"rollout engine {r - 1}" for r in range(1, world)]
    return SyncChannel("127.0.0.1", port, 0, world, timeout_s, peer_names=names), peers, threads


def test_sync_group_broadcasts_buckets_and_names_a_peer_that_never_joins():
    ch, peers, threads = _channels(3, [1, 2], 20)
    for t in threads:
        t.join()
    sent = torch.arange(10, dtype=torch.float32)
    got = {r: torch.zeros(10) for r in peers}
    ts = [threading.Thread(target=peers[r].broadcast, args=(got[r], "test")) for r in peers]
    for t in ts:
        t.start()
    ch.broadcast(sent, "test")
    for t in ts:
        t.join()
    assert all(torch.equal(v, sent) for v in got.values())
    peers[2].mark("ready/1")
    assert ch.missing("ready/1") == [1]

    t0 = time.monotonic()
    with pytest.raises(SyncTimeout, match=r"rollout engine 1 did not join the weight sync group within 2 s"):
        _channels(3, [1], 2)  # rank 2 never comes
    assert time.monotonic() - t0 < 10


def _tied_copy(src, dst):
    """The tiny Llama with tie_word_embeddings: lm_head is the input embedding."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from cropi.model.loading import load_model

    cfg = AutoConfig.from_pretrained(src)
    cfg.tie_word_embeddings = True
    m = AutoModelForCausalLM.from_config(cfg)
    sd = {k: v for k, v in load_model(src).state_dict().items() if k != "lm_head.weight"}
    missing, _ = m.load_state_dict(sd, strict=False)
    assert set(missing) <= {"lm_head.weight"}
    assert m.lm_head.weight is m.model.embed_tokens.weight
    m.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def _hf_from_bytes(path, blob):
    from safetensors.torch import load

    from cropi.model.loading import load_model

    m = load_model(path)
    missing, unexpected = m.load_state_dict(load(blob), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return m.eval()


@pytest.fixture(scope="module")
def ray4():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)  # logical CPUs: 2 engines + 2 ranks
    yield
    ray.shutdown()


def _check_sync(model, engines, world, zero, tmp_tag, check_never_joins=False, sync="broadcast"):
    import ray

    from cropi.model.loading import load_tokenizer
    from cropi.model.sequences import collate, token_logprobs
    from cropi.sync.link import WeightLink
    from cropi.trainer.group import TrainerGroup
    from tests.test_trainer import _batch

    cfg = load_config("configs/tiny-cpu.yaml", [
        f"trainer.world_size={world}", f"trainer.zero_stage={zero}", "trainer.lr=0.1", "trainer.adam_eps=1.0",
        f"trainer.sync={sync}", "trainer.sync_bucket_mb=0.05", "trainer.sync_timeout_s=60",
        f"resources.rollout.num_workers={len(engines)}", "resources.trainer.num_cpus=0.5", "resources.local_num_cpus=4"])
    tok = load_tokenizer(model)
    full = _batch(tok, n=8)
    seqs = [p + r for p, r in zip(full["prompt_ids"][:4], full["response_ids"][:4])]
    ids, attn, _ = collate([s[:1] for s in seqs], [s[1:] for s in seqs], tok.pad_token_id)
    with TrainerGroup(cfg, str(model), str(model), tag=tmp_tag) as group:
        if check_never_joins:  # a real trainer rank 0 whose second peer never comes
            host, port = ray.get(group.ranks[0].sync_address.remote())
            t0 = time.monotonic()
            with pytest.raises(SyncTimeout, match=r"rollout engine 7 did not join .* within 3 s"):
                ray.get([r.sync_open.remote(host, port, 2, 3.0, "gloo", ["trainer rank 0", "rollout engine 7"], 2**20,
                                             0 if i == 0 else None)
                         for i, r in enumerate(group.ranks)])
            assert time.monotonic() - t0 < 15
        link = WeightLink(cfg, group, engines)
        link.push()  # the start weights (an engine may hold an earlier group's)
        before = ray.get(engines.actors[-1].prompt_logprobs.remote(seqs))
        shards = [{**full, "micro_batches": [list(range(len(full["prompt_ids"][r::world])))],
                   **{k: full[k][r::world] for k in ("prompt_ids", "response_ids", "advantages")}} for r in range(world)]
        for _ in range(2):
            group.train_step(shards, 20.0)
        stats = link.push()
        assert stats["buckets"] > 5 and stats["bytes"] > 0  # 0.05 MiB buckets: many of them
        after = [ray.get(e.prompt_logprobs.remote(seqs)) for e in engines.actors]
        trained = _hf_from_bytes(model, group.weights())
    with torch.no_grad():
        lp = token_logprobs(trained, ids, attn)
    gap = 0.0
    for i, s in enumerate(seqs):
        for a in after:
            torch.testing.assert_close(torch.tensor(a[i]), lp[i, 1:len(s)], rtol=0, atol=2e-4)
        gap = max(gap, float((torch.tensor(before[i]) - lp[i, 1:len(s)]).abs().max()))
    assert gap > 0.05  # the sync really changed what the engines compute


@pytest.mark.integration
def test_broadcast_sync_engine_logprobs_equal_trainer(tiny_model, ray4):
    """Two engines (world 1+2 sync group members), each trainer group opening its own group with them."""
    from cropi.rollout.engine_actor import engine_pool

    cfg = load_config("configs/tiny-cpu.yaml", ["resources.rollout.num_workers=2", "resources.rollout.num_cpus=1"])
    with engine_pool(cfg, str(tiny_model), "bcast") as engines:
        _check_sync(tiny_model, engines, world=1, zero=2, tmp_tag="w1z2", check_never_joins=True)
        _check_sync(tiny_model, engines, world=2, zero=3, tmp_tag="w2z3")


@pytest.mark.integration
def test_ipc_sync_engine_logprobs_equal_trainer(tiny_model, ray4):
    """Colocated sync by shared-memory handles (CUDA IPC on a GPU, POSIX shared memory here): each
    trainer rank hands the engine beside it its own buffers; ZeRO-2 (two senders, the ranks' own
    copies) and ZeRO-3 (every rank gathers, each sends), and a rank without an engine."""
    from cropi.rollout.engine_actor import engine_pool

    cfg = load_config("configs/tiny-cpu.yaml", ["resources.rollout.num_workers=2", "resources.rollout.num_cpus=1"])
    with engine_pool(cfg, str(tiny_model), "ipc") as engines:
        _check_sync(tiny_model, engines, world=2, zero=2, tmp_tag="ipc-w2z2", sync="ipc")
        _check_sync(tiny_model, engines, world=2, zero=3, tmp_tag="ipc-w2z3", sync="ipc")


@pytest.mark.integration
def test_broadcast_sync_tied_embeddings(tiny_model, ray4, tmp_path):
    from cropi.rollout.engine_actor import engine_pool

    tied = _tied_copy(tiny_model, tmp_path / "tied")
    cfg = load_config("configs/tiny-cpu.yaml", ["resources.rollout.num_cpus=1"])
    with engine_pool(cfg, str(tied), "bcast-tied") as engines:
        _check_sync(tied, engines, world=2, zero=2, tmp_tag="t-w2z2")
        _check_sync(tied, engines, world=1, zero=3, tmp_tag="t-w1z3")


@pytest.mark.integration
def test_engine_that_dies_fails_the_sync_naming_it(tiny_model, ray4):
    import ray

    from cropi.errors import CropiError
    from cropi.rollout.engine_actor import engine_pool
    from cropi.sync.link import WeightLink
    from cropi.trainer.group import TrainerGroup

    cfg = load_config("configs/tiny-cpu.yaml", ["trainer.world_size=1", "trainer.sync_timeout_s=20",
                                                "resources.rollout.num_workers=2", "resources.rollout.num_cpus=1",
                                                "resources.rollout.max_restarts=0"])
    with engine_pool(cfg, str(tiny_model), "bcast-die") as engines, \
            TrainerGroup(cfg, str(tiny_model), str(tiny_model), tag="die") as group:
        link = WeightLink(cfg, group, engines)
        link.push()
        ray.kill(engines.actors[1])
        t0 = time.monotonic()
        with pytest.raises(CropiError, match=r"weight sync 2: rollout engine 1 died"):
            link.push()
        assert time.monotonic() - t0 < 20
