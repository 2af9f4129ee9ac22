"""Quiet logs: every actor gets the quiet environment unless --verbose; the job log of a real run
is checked for the engines' chatter in test_loop.py::test_ray_job_submit_to_local_head."""

from cropi.cli import build_parser
from cropi.logs import QUIET_ENV, VERBOSE_ENV, actor_env
from cropi.pool import with_log_env


def test_actor_env_quiet_by_default_and_verbose_on_request(monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    env = actor_env()
    assert env["VLLM_LOGGING_LEVEL"] == "ERROR" and env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert actor_env() == {VERBOSE_ENV: "1"}


def test_worker_options_carry_the_log_env_and_keep_their_own(monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    opts = with_log_env({"runtime_env": {"env_vars": {"DS_ACCELERATOR": "cpu", "VLLM_LOGGING_LEVEL": "DEBUG"}},
                         "max_restarts": 1})
    env = opts["runtime_env"]["env_vars"]
    assert env["DS_ACCELERATOR"] == "cpu" and env["VLLM_LOGGING_LEVEL"] == "DEBUG"  # the caller's own wins
    assert set(QUIET_ENV) <= set(env) and opts["max_restarts"] == 1
    assert with_log_env(None)["runtime_env"]["env_vars"][VERBOSE_ENV] == "0"


def test_verbose_flag_on_every_config_command(monkeypatch, tiny_model):
    import os

    from cropi import cli

    monkeypatch.setenv(VERBOSE_ENV, "0")  # restored after the test
    assert build_parser().parse_args(["rollout", "configs/tiny-cpu.yaml", "--verbose"]).verbose
    assert cli.main(["plan", "configs/tiny-cpu.yaml"]) == 0 and os.environ[VERBOSE_ENV] == "0"
    assert cli.main(["plan", "configs/tiny-cpu.yaml", "--verbose"]) == 0 and os.environ[VERBOSE_ENV] == "1"


def test_quiet_prints_drops_a_library_print_unless_verbose(monkeypatch, capsys):
    from cropi.logs import quiet_prints, set_verbose

    monkeypatch.setenv("CROPI_VERBOSE", "0")
    with quiet_prints():
        print("DeepSpeed Shared Memory Comm built successfully")
    set_verbose(True)
    with quiet_prints():
        print("kept when verbose")
    assert capsys.readouterr().out == "kept when verbose\n"
