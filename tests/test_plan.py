"""`cropi plan`: the memory estimate from a model's config.json, and the refusal of what does not fit."""

import json

import pytest

from cropi.config import load_config
from cropi.errors import CropiError
from cropi.plan import GIB, ModelShape, check, estimate

QWEN25_15B = {  # Qwen2.5-1.5B's config.json, the architecture fields
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536,
    "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
    "max_position_embeddings": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
}


@pytest.fixture
def qwen_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_15B))
    return tmp_path


def test_shape_counts_parameters_from_the_config_alone(qwen_dir):
    shape = ModelShape.of(str(qwen_dir))
    assert 1.50e9 < shape.params < 1.56e9  # Qwen2.5-1.5B: 1.54B with the tied embedding counted once
    assert shape.vocab == 151936 and shape.layers == 28 and shape.largest_matrix == 151936 * 1536


def test_the_paper_config_fits_on_80gb_and_a_larger_budget_is_refused(qwen_dir):
    cfg = load_config("configs/qwen2.5-1.5b-8gpu.yaml", [f"model.path={qwen_dir}"])
    plan = estimate(cfg)
    assert plan["device_memory_gib"] == 80
    check(plan)  # fits
    tr = plan["stages"]["trainer rank"]
    # bf16 weights and the frozen reference: 2 bytes x 1.54B each
    assert tr["weights"] == pytest.approx(tr["reference_model"]) == pytest.approx(1.54e9 * 2 / GIB, rel=0.02)
    assert tr["logits_chunk"] == pytest.approx(3 * 1024 * 151936 * 4 / GIB, rel=1e-3)
    assert tr["total"] < 40
    big = load_config("configs/qwen2.5-1.5b-8gpu.yaml", [f"model.path={qwen_dir}", "trainer.gradient_checkpointing=false",
                                                         "trainer.max_tokens_per_micro_batch=400000"])
    with pytest.raises(CropiError, match=r"trainer rank: estimated peak .* > 80\.0 GiB .*trainer\.max_tokens_per_micro_batch"):
        check(estimate(big))
    wide = load_config("configs/qwen2.5-1.5b-8gpu.yaml", [f"model.path={qwen_dir}", "influence.logits_chunk_tokens=100000"])
    with pytest.raises(CropiError, match=r"gradient actor: .*influence\.logits_chunk_tokens"):
        check(estimate(wide))


def test_cli_run_refuses_before_launching(qwen_dir, tmp_path, capsys):
    from cropi.cli import main

    (qwen_dir / "model.safetensors").write_bytes(len(b"{}").to_bytes(8, "little") + b"{}")  # in form, no tensors
    args = ["run", "configs/qwen2.5-1.5b-8gpu.yaml", "--set", f"model.path={qwen_dir}", "--set",
            f"run.dir={tmp_path / 'run'}", "--set", "trainer.logits_chunk_tokens=200000"]
    assert main(args) == 2
    assert "trainer rank: estimated peak" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
