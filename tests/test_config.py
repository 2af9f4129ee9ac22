import pytest

from cropi.config import Config, load_config, parse_override, reference_markdown
from cropi.errors import ConfigError


def test_tiny_yaml_loads_and_overrides(tmp_path):
    cfg = load_config("configs/tiny-cpu.yaml", ["selection.alpha=0.25", "data.families=[add, mul]",
                                                "rollout.temperature=1"])
    assert cfg.selection.alpha == 0.25
    assert cfg.data.families == ["add", "mul"]
    assert cfg.rollout.temperature == 1.0 and isinstance(cfg.rollout.temperature, float)
    assert cfg.run.dir == "runs/tiny"


@pytest.mark.parametrize("override, field", [
    ("selection.alpha=0", "selection.alpha"),
    ("selection.alpha=1.5", "selection.alpha"),
    ("rollout.k_train=0", "rollout.k_train"),
    ("influence.mode=approx", "influence.mode"),
    ("trainer.zero_stage=4", "trainer.zero_stage"),
    ("rollout.k_train=eight", "rollout.k_train"),
    ("rollout.k_train=true", "rollout.k_train"),
    ("data.families=[add, pow]", "data.families"),
    ("model.dtype=int8", "model.dtype"),
])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("configs/tiny-cpu.yaml", [override])


def test_unknown_keys_rejected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("rollout:\n  k_trian: 8\n")
    with pytest.raises(ConfigError, match=r"rollout\.k_trian"):
        load_config(p)
    p.write_text("rolout:\n  k_train: 8\n")
    with pytest.raises(ConfigError, match="rolout"):
        load_config(p)
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("alpha=0.1")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def _leaves(obj) -> int:
    import dataclasses

    return sum(_leaves(v) if dataclasses.is_dataclass(v) else 1 for v in vars(obj).values())


def test_reference_lists_every_field_with_its_rules():
    ref = reference_markdown()
    assert "`selection.alpha`" in ref and "`rollout.k_val`" in ref and "`resources.rollout.num_workers`" in ref
    assert ref.count("\n| `") == _leaves(Config()) > 60
    line = next(x for x in ref.splitlines() if x.startswith("| `influence.mode`"))
    assert "`exact`" in line and "`projected`" in line  # allowed values come from the field metadata
    line = next(x for x in ref.splitlines() if x.startswith("| `selection.alpha`"))
    assert "> 0" in line and "<= 1" in line


def test_nested_resource_sections_load_from_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("resources:\n  rollout:\n    num_workers: 3\n  influence: {num_actors: 4}\n")
    cfg = load_config(p, ["resources.influence.num_cpus=0.5"])
    assert cfg.resources.rollout.num_workers == 3 and cfg.resources.influence.num_actors == 4
    assert cfg.resources.influence.num_cpus == 0.5
    with pytest.raises(ConfigError, match=r"resources\.rollout\.num_wrkers"):
        load_config(None, ["resources.rollout.num_wrkers=2"])
    with pytest.raises(ConfigError, match=r"resources\.influence\.num_actors: must be >= 1"):
        load_config(None, ["resources.influence.num_actors=0"])


@pytest.mark.parametrize("old", ["trainer.batch_prompts=4", "influence.batch_prompts=4",
                                 "rollout.num_workers=2",
                                 "model.build_hidden_size=64", "influence.num_actors=2"])
def test_renamed_and_moved_fields_are_unknown(old):
    with pytest.raises(ConfigError, match="unknown config field " + old.split("=")[0].replace(".", r"\.")):
        load_config("configs/tiny-cpu.yaml", [old])


def test_combinations_across_sections_are_checked():
    with pytest.raises(ConfigError, match=r"resources\.trainer\.num_gpus.*resources\.device is cpu"):
        load_config("configs/tiny-cpu.yaml", ["resources.trainer.num_gpus=1"])
    with pytest.raises(ConfigError, match=r"resources\.rollout\.num_gpus: must be > 0 when resources\.device is cuda"):
        load_config("configs/tiny-cpu.yaml", ["resources.device=cuda"])
    with pytest.raises(ConfigError, match=r"rollout\.max_new_tokens: must be < rollout\.max_model_len"):
        load_config("configs/tiny-cpu.yaml", ["rollout.max_new_tokens=200"])
    with pytest.raises(ConfigError, match=r"base_model\.hidden_size"):
        load_config("configs/tiny-cpu.yaml", ["base_model.num_heads=3"])


def test_resume_hashes_ignore_resources():
    from cropi.influence.actor import influence_hash
    from cropi.store.buffer import buffer_hash
    from cropi.store.run_record import phase_inputs

    a = load_config("configs/tiny-cpu.yaml")
    b = load_config("configs/tiny-cpu.yaml", ["resources.influence.num_actors=1", "resources.rollout.num_workers=2",
                                              "resources.influence.num_cpus=2", "resources.placement=split"])
    assert influence_hash(a, "ckpt") == influence_hash(b, "ckpt") and buffer_hash(a) == buffer_hash(b)
    assert phase_inputs(a) == phase_inputs(b)
    c = load_config("configs/tiny-cpu.yaml", ["influence.max_tokens_per_backward=4096"])
    assert influence_hash(a, "ckpt") != influence_hash(c, "ckpt")
    d = load_config("configs/tiny-cpu.yaml", ["rollout.k_train=4"])
    assert buffer_hash(a) != buffer_hash(d) and phase_inputs(a) != phase_inputs(d)


def test_readme_reference_is_current_and_every_config_loads():
    from pathlib import Path

    readme = Path("README.md").read_text()
    block = readme.split("<!-- config-reference:start -->\n", 1)[1].split("\n<!-- config-reference:end -->", 1)[0]
    assert block == reference_markdown(), "README's config reference is stale: regenerate with `cropi config-reference`"
    for path in sorted(Path("configs").glob("*.yaml")):
        load_config(path)


def test_check_only_fields_change_no_hash_and_no_phase_input():
    """data.reward_range only checks rewards: widening it must not orphan a buffer, a base model or
    a begun phase (nor did adding the field change the hashes of runs made before it existed)."""
    from cropi.config import not_inputs
    from cropi.store.run_record import phase_inputs

    a, b = load_config(None), load_config(None, ["data.reward_range=[-1, 2]"])
    from cropi.store.buffer import buffer_hash

    assert "data.reward_range" in not_inputs()
    assert buffer_hash(a) == buffer_hash(b)
    assert phase_inputs(a) == phase_inputs(b) and "data.reward_range" not in phase_inputs(a)
    assert buffer_hash(a) != buffer_hash(load_config(None, ["data.val_size=7"]))
