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


def test_section_hash_depends_only_on_named_sections():
    a, b = Config(), Config()
    b.trainer.lr = 1.0
    assert a.section_hash("rollout", "data") == b.section_hash("rollout", "data")
    b.rollout.k_train = 3
    assert a.section_hash("rollout", "data") != b.section_hash("rollout", "data")


def test_reference_lists_every_field():
    ref = reference_markdown()
    assert "`selection.alpha`" in ref and "`rollout.k_val`" in ref
    n_fields = sum(len(vars(getattr(Config(), s))) for s in vars(Config()))
    assert ref.count("\n| `") == n_fields


def test_readme_reference_is_current_and_every_config_loads():
    from pathlib import Path

    readme = Path("README.md").read_text()
    block = readme.split("<!-- config-reference:start -->\n", 1)[1].split("\n<!-- config-reference:end -->", 1)[0]
    assert block == reference_markdown(), "README's config reference is stale: regenerate with `cropi config-reference`"
    for path in sorted(Path("configs").glob("*.yaml")):
        load_config(path)
