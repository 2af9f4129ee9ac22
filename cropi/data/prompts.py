"""How a prompt becomes token ids, as verl does it, and what happens to one that is too long.

    enc = PromptEncoder.of(cfg, tokenizer)
    ids = enc.encode(row.messages)        # what vLLM is prompted with, and what the buffer stores

A tokenizer with a chat template: the template is rendered with the generation prompt
(`data.chat_template_kwargs` passed through, e.g. enable_thinking for Qwen3) and the text is
tokenized **without** added special tokens, exactly as verl's and OpenRLHF's datasets do: the
template carries the BOS where the model wants one, so a template that starts with
`{{ bos_token }}` (Llama 3) yields one BOS, not two. A tokenizer without a template (the tiny
task model): the messages' contents joined and tokenized with the tokenizer's own special tokens.

`rollout.max_prompt_length` (0: max_model_len - max_new_tokens) bounds the prompt; a longer one is
refused naming its file and row (`rollout.overlong_prompt: error`, verl's truncation='error'),
dropped from the dataset when it loads (`filter`, verl's filter_overlong_prompts), or cut to its
last max_prompt_length tokens (`truncate_left`, verl's truncation='left').
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cropi.errors import DataError


@dataclass
class PromptEncoder:
    tok: object
    template_kwargs: dict = field(default_factory=dict)
    max_len: int = 0  # 0: unbounded
    policy: str = "error"

    @classmethod
    def of(cls, cfg, tok) -> "PromptEncoder":
        return cls(tok, dict(cfg.data.chat_template_kwargs), max_prompt_length(cfg), cfg.rollout.overlong_prompt)

    @property
    def templated(self) -> bool:
        return bool(getattr(self.tok, "chat_template", None))

    def text(self, messages: list[dict]) -> str:
        if self.templated:
            return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                **self.template_kwargs)
        return "\n".join(m["content"] for m in messages)

    def full_ids(self, messages: list[dict]) -> list[int]:
        return list(self.tok(self.text(messages), add_special_tokens=not self.templated)["input_ids"])

    def encode(self, messages: list[dict]) -> list[int]:
        ids = self.full_ids(messages)
        if self.max_len and len(ids) > self.max_len and self.policy == "truncate_left":
            return ids[-self.max_len:]
        return ids

    def apply(self, rows: list, where: str) -> tuple[list, dict]:
        """The rows this policy keeps, and {overlong, filtered, truncated} counts; `error` raises
        naming the first overlong row."""
        counts = {"overlong": 0, "filtered": 0, "truncated": 0, "max_prompt_length": self.max_len}
        if not self.max_len:
            return rows, counts
        kept = []
        for r in rows:
            n = len(self.full_ids(r.messages))
            if n <= self.max_len:
                kept.append(r)
                continue
            counts["overlong"] += 1
            if self.policy == "error":
                raise DataError(f"{where} row {r.prompt_id}: the prompt is {n} tokens, over rollout.max_prompt_length "
                                f"{self.max_len}; set rollout.overlong_prompt to filter (drop such rows) or "
                                "truncate_left (keep the last tokens), or raise the limit")
            if self.policy == "filter":
                counts["filtered"] += 1
                continue
            counts["truncated"] += 1
            kept.append(r)
        return kept, counts


def max_prompt_length(cfg) -> int:
    ro = cfg.rollout
    return ro.max_prompt_length or (ro.max_model_len - ro.max_new_tokens)
