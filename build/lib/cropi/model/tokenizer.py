"""A byte-level BPE tokenizer trained locally on the task text (no hub downloads).

Digits are pre-split one per token (arithmetic is learnable that way); a BOS token is added to
every encoded text by the post-processor, so vLLM and Hugging Face tokenise prompts the same.

Under the `qwen2` model type, transformers' AutoTokenizer builds a `Qwen2Tokenizer` whatever
tokenizer_config.json says, and that class replaces the saved pre-tokenizer and normalizer with
its own. For a qwen2 tiny model we therefore train with Qwen2's own pre-tokenizer and normalizer
(taken from the class, which also splits digits one per token), and `check_reloads` proves that
the saved directory encodes every text as the in-memory tokenizer did.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from cropi.errors import CropiError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def _pre_tokenization(tok: Tokenizer, architecture: str) -> None:
    if architecture == "qwen2":
        from transformers import Qwen2Tokenizer

        ref = Qwen2Tokenizer().backend_tokenizer  # an empty vocabulary: only its text handling is used
        tok.normalizer, tok.pre_tokenizer = ref.normalizer, ref.pre_tokenizer
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )


def train_tokenizer(texts: list[str], vocab_size: int, architecture: str = "llama") -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    _pre_tokenization(tok, architecture)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left",
        model_max_length=128,
    )


def check_reloads(tok, directory: str | Path, texts: list[str]) -> None:
    """The tokenizer saved in `directory` (next to its config.json) must encode every text, and
    the special tokens, exactly as `tok` does; else the model would be trained on other ids than
    vLLM and the trainers later feed it."""
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(directory)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(back, name) != getattr(tok, name):
            raise CropiError(f"tokenizer saved in {directory} reloads as {type(back).__name__} with "
                             f"{name} {getattr(back, name)} instead of {getattr(tok, name)}")
    for i, (a, b) in enumerate(zip(tok(texts)["input_ids"], back(texts)["input_ids"])):
        if a != b:
            text = texts[i]
            raise CropiError(f"tokenizer saved in {directory} reloads as {type(back).__name__} and encodes "
                             f"text {i} ({text[:60]!r}) as {b[:12]}... instead of {a[:12]}...")
