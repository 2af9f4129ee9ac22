"""The one worker lifecycle: work goes to idle actors, errors surface cleanly, and the actors and
their placement group are gone afterwards whatever happened."""

import os
import time

import pytest
import ray

from cropi.errors import CropiError
from cropi.pool import WorkerPool

pytestmark = pytest.mark.integration


@ray.remote
class Echo:
    def __init__(self, index: int):
        self.index = index

    def work(self, x):
        if x == "bad":
            raise CropiError("row 7 of the input is bad")
        if x == "die":
            os._exit(1)
        time.sleep(0.05)
        return self.index, x

    def pid(self):
        return os.getpid()

    def collective(self, role):
        """A collective step whose peer dies: the survivor fails first, as gloo does ("Connection
        closed by peer"), before the dead one's death is known."""
        if role == "survivor":
            raise RuntimeError("Connection closed by peer [127.0.0.1]:5315")
        if role == "dies":
            time.sleep(0.5)
            os._exit(1)
        time.sleep(0.5)
        return role


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def _pool(name):
    return WorkerPool(Echo, lambda i: (i,), count=2, cpus=0.5, gpus=0.0, what="test stage", name=name)


def _gone(name, count=2, timeout=30.0):
    """Every actor of the pool is dead and its placement group removed."""
    from ray.util import placement_group_table

    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = []
        for i in range(count):
            try:
                ray.get_actor(f"{name}-{i}")
                alive.append(i)
            except ValueError:
                pass
        groups = [g for g in placement_group_table().values() if g["state"] != "REMOVED"]
        if not alive and not groups:
            return True
        time.sleep(0.2)
    return False


def test_map_returns_in_item_order_using_every_actor(ray_local):
    seen = []
    with _pool("cropi-test-a") as pool:
        out = pool.map(lambda a, x: a.work.remote(x), list(range(8)), on_done=lambda x, r: seen.append(x))
        assert len(pool) == 2
    assert [x for _, x in out] == list(range(8)) and sorted(seen) == list(range(8))
    assert {i for i, _ in out} == {0, 1}  # both actors got work
    assert _gone("cropi-test-a")


def test_an_error_inside_an_actor_surfaces_as_itself_and_tears_down(ray_local):
    with pytest.raises(CropiError, match="^row 7 of the input is bad$"):
        with _pool("cropi-test-b") as pool:
            pool.map(lambda a, x: a.work.remote(x), ["ok", "bad", "ok"])
    assert _gone("cropi-test-b")


def test_a_dead_actor_names_the_stage_and_the_item(ray_local):
    with pytest.raises(CropiError, match="test stage: a worker died while working on die .*rerun the same command"):
        with _pool("cropi-test-c") as pool:
            pool.map(lambda a, x: a.work.remote(x), ["die"])
    assert _gone("cropi-test-c")


def test_an_exception_in_the_driver_still_tears_down(ray_local):
    with pytest.raises(KeyError):
        with _pool("cropi-test-d") as pool:
            pool.map(lambda a, x: a.work.remote(x), [1])
            raise KeyError("driver bug")
    assert _gone("cropi-test-d")


def _stopped_process_is_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("how", ["each", "map"])
def test_a_stopped_actor_is_named_as_hung_and_killed(ray_local, how):
    import signal

    from cropi.errors import WorkerDied, WorkerHung

    with _pool(f"cropi-test-h{how}") as pool:
        pids = pool.each(lambda a: a.pid.remote())
        assert pool.each(lambda a: a.work.remote(1), timeout_s=30)  # answered in time: no effect
        os.kill(pids[1], signal.SIGSTOP)
        t0 = time.time()
        with pytest.raises(WorkerHung, match=rf"test stage: cropi-test-h{how}-1 did not answer .*within "
                                             r"run.hang_timeout_s = 2 s .* was killed") as e:
            if how == "each":
                pool.each(lambda a: a.work.remote(2), timeout_s=2)
            else:
                pool.map(lambda a, x: a.work.remote(x), list(range(6)), timeout_s=2)
        assert isinstance(e.value, WorkerDied)  # the loop redoes the stage as after a death
        assert time.time() - t0 < 30
        assert _stopped_process_is_gone(pids[1])  # never left holding its slot (or a GPU)
    assert _gone(f"cropi-test-h{how}")


@pytest.mark.parametrize("timeout_s", [0.0, 20.0])
def test_a_collective_whose_peer_died_is_a_death_not_the_survivors_error(ray_local, timeout_s):
    """Rank 0's collective error surfaces first (refs in actor order), but rank 1 died: the pool
    says a worker died (WorkerDied: the loop redoes the stage). With no death, the survivor's
    own error stands."""
    from cropi.errors import WorkerDied

    with pytest.raises(WorkerDied, match="test stage: a worker died while working on a collective call"):
        with _pool("cropi-test-p") as pool:
            pool.each(lambda a, role: a.collective.remote(role), ["survivor", "dies"], timeout_s=timeout_s)
    assert _gone("cropi-test-p")
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        with _pool("cropi-test-q") as pool:
            pool.each(lambda a, role: a.collective.remote(role), ["survivor", "fine"], timeout_s=timeout_s)
    assert _gone("cropi-test-q")


@ray.remote
class SlowStart:
    def __init__(self, index: int, ready_at: float):
        time.sleep(max(0.0, ready_at - time.time()))  # an engine or a model loading in the constructor

    def work(self, x):
        time.sleep(6.0)
        return x


def test_the_hang_clock_counts_an_items_work_not_the_actors_start_up(ray_local):
    """Actors constructed 6 s after the pool is made, then 6 s items: within a 10 s timeout each
    (start-up and item each get it), not counted together (12 s); a start-up longer than the
    timeout is itself a hang, named as such."""
    from cropi.errors import WorkerHung

    ready_at = time.time() + 6.0
    with WorkerPool(SlowStart, lambda i: (i, ready_at), count=2, cpus=0.5, gpus=0.0, what="test stage",
                    name="cropi-test-s") as pool:
        assert pool.map(lambda a, x: a.work.remote(x), [0, 1], timeout_s=10) == [0, 1]
        assert pool.each(lambda a: a.work.remote(7), timeout_s=10) == [7, 7]
    ready_at = time.time() + 60.0
    with pytest.raises(WorkerHung, match="cropi-test-t-0, cropi-test-t-1 did not answer its start-up within "
                                         "run.hang_timeout_s = 10 s"):
        with WorkerPool(SlowStart, lambda i: (i, ready_at), count=2, cpus=0.5, gpus=0.0, what="test stage",
                        name="cropi-test-t") as pool:
            pool.map(lambda a, x: a.work.remote(x), [1], timeout_s=10)
    assert _gone("cropi-test-t")
