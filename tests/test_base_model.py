import json

import pytest
import torch

from cropi.cli import main
from cropi.errors import CropiError
from cropi.data.base_model import build_base_model, read_marker, sample_pass_rate
from cropi.model.loading import load_model, load_tokenizer
from cropi.data.rewards import exact_integer


def test_tiny_model_pass_rates_in_band(tiny_cfg, tiny_model):
    info = read_marker(tiny_model)
    assert info["in_target_band"], info["pass_rates"]
    assert all(0.1 < r < 0.8 for r in info["pass_rates"].values()), info["pass_rates"]
    assert set(info["pass_rates"]) == set(tiny_cfg.data.families)


def test_tiny_model_loads_and_really_solves_some_prompts(tiny_cfg, tiny_model):
    from cropi.data.suite import load_data

    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    assert tok("1+2=")["input_ids"][0] == tok.bos_token_id
    _, val = load_data(tiny_cfg)
    rate = sample_pass_rate(model, tok, val["add"][:32], exact_integer, n=4, temperature=0.5,
                            max_new_tokens=8, seed=123)
    assert 0.05 < rate < 0.9  # re-measured independently of the marker, on a different seed


def test_build_is_deterministic(tiny_cfg, tmp_path):
    import copy
    from cropi.data.suite import load_data

    cfg = copy.deepcopy(tiny_cfg)
    cfg.base_model.warm_start_steps, cfg.base_model.warm_start_eval_every = 20, 20
    train, val = load_data(cfg)
    val = {k: v[:8] for k, v in val.items()}
    a = build_base_model(cfg, train, val, tmp_path / "a", log=lambda *_: None)
    b = build_base_model(cfg, train, val, tmp_path / "b", log=lambda *_: None)
    assert a["pass_rates"] == b["pass_rates"]
    ma, mb = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    for (n, pa), (_, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert torch.equal(pa, pb), n
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    assert not (tmp_path / "a.partial").exists()


def test_missing_model_path_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(CropiError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    with pytest.raises(CropiError, match="no config.json"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CropiError, match="no weights"):
        load_model(tmp_path / "m")
    rc = main(["demo", "configs/tiny-cpu.yaml", "--set", f"model.path={tmp_path / 'nope'}"])
    assert rc == 2
    assert "model path" in capsys.readouterr().err


def test_cli_rejects_bad_config_value(capsys):
    rc = main(["make-base-model", "configs/tiny-cpu.yaml", "--set", "selection.alpha=2"])
    assert rc == 2
    assert "selection.alpha" in capsys.readouterr().err


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_tokenizer_reloads_with_the_same_ids_under_its_model_type(architecture, tmp_path):
    """Under model_type qwen2 AutoTokenizer builds Qwen2Tokenizer, which swaps in its own
    pre-tokenizer and NFC normalizer: a qwen2 tiny model's tokenizer is trained with those, and
    check_reloads catches a tokenizer that would change ids (NFC composes e + U+0301)."""
    from transformers import AutoTokenizer, LlamaConfig, Qwen2Config

    from cropi.model.tokenizer import check_reloads, train_tokenizer

    texts = [f"{a}*{b}=\n{a * b}" for a in range(40) for b in range(0, 40, 3)] + ["cafe\u0301 x-abc  it's"]
    config = Qwen2Config(vocab_size=400) if architecture == "qwen2" else LlamaConfig(vocab_size=400)
    right = train_tokenizer(texts, 300, architecture)
    config.save_pretrained(tmp_path / "ok")
    right.save_pretrained(tmp_path / "ok")
    check_reloads(right, tmp_path / "ok", texts)
    assert right("417*23=")["input_ids"] == [right.bos_token_id] + [right.convert_tokens_to_ids(c) for c in "417*23="]
    if architecture == "qwen2":
        assert type(AutoTokenizer.from_pretrained(tmp_path / "ok")).__name__ == "Qwen2Tokenizer"
        wrong = train_tokenizer(texts, 300, "llama")  # Llama's pre-tokenizer saved under qwen2
        wrong.save_pretrained(tmp_path / "bad")
        config.save_pretrained(tmp_path / "bad")
        with pytest.raises(CropiError, match=r"reloads as Qwen2Tokenizer and encodes text 0 "):
            check_reloads(wrong, tmp_path / "bad", texts[-1:])
