"""The prompt format: the one definition used by fine-tuning, evaluation and the llama.cpp worker.

Standard library only (the edge runtime imports it without torch).

Layout, in the base model's ChatML chat template (SmolLM2's; LLaMA-family models fine-tuned
here use the same text):

    <|im_start|>system\\n{SYSTEM}<|im_end|>\\n<|im_start|>user\\n{instruction with the label list}\\n   <- prefix
    <video><act_017><act_203>...<count_3></video>                                        <- token ids
    <|im_end|>\\n<|im_start|>assistant\\nLabel:                                            <- suffix
     {label}\\nExplanation: {one sentence}<|im_end|>                                       <- answer

The prefix is fixed for a bundle (labels included), so its KV cache is evaluated once and
reused for every window; only the video block and the short suffix change. The K action tokens
and <video>/</video> are new vocabulary appended after the base vocabulary: <video> is
`base`, </video> is `base + 1`, <act_i> is `base + 2 + i`. They are fed as ids, never as text.

Format 2 adds the count token: where the VST has a repetitions head, a model fine-tuned with
`counts` = its largest count has `counts` more tokens <count_1> ... after the action tokens
(<count_n> is `base + 2 + K + n - 1`), and every video block ends with the one the head reads
for the window: how many times the window shows the motion. With `counts` = 0 a block is
format 1's, which format 2 readers still read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PROMPT_FORMAT_VERSION = 2
READS_FORMATS = (1, 2)  # format 1 is format 2 without count tokens
VIDEO_START = "<video>"
VIDEO_END = "</video>"
SYSTEM = "You are lvlm-var, a video action recognition assistant. You read video as action tokens."
INSTRUCTION = (
    "Which action does the person in this video perform? Choose one label from: {labels}. "
    "Answer with the label, then explain in one sentence what the person does."
)
ANSWER_LABEL = "Label:"
ANSWER_EXPLANATION = "Explanation:"
END_OF_TURN = "<|im_end|>"


def act_token(i: int) -> str:
    return f"<act_{i:03d}>"


def count_token(n: int) -> str:
    return f"<count_{n}>"


def added_tokens(codes: int, counts: int = 0) -> list[str]:
    """The new vocabulary in id order: <video>, </video>, <act_000> ... <act_{K-1}>, then
    <count_1> ... <count_{counts}>."""
    return (
        [VIDEO_START, VIDEO_END] + [act_token(i) for i in range(codes)] + [count_token(n) for n in range(1, counts + 1)]
    )


def _check_window(tokens: Sequence[int], codes: int, count: int | None, counts: int) -> None:
    for t in tokens:
        if not 0 <= t < codes:
            raise ValueError(f"action token {t} outside the codebook 0..{codes - 1}")
    if counts and count is None:
        raise ValueError(f"this model reads a count token (1..{counts}) after the action tokens; the window has none")
    if count is not None and not (counts and 1 <= count <= counts):
        raise ValueError(
            f"count {count} outside this model's count tokens" + (f" 1..{counts}" if counts else " (it has none)")
        )


def video_ids(tokens: Sequence[int], base: int, codes: int, count: int | None = None, counts: int = 0) -> list[int]:
    """<video> act... [<count_n>] </video> as token ids for a window's codes (and, for a model
    with `counts` count tokens, the window's count)."""
    _check_window(tokens, codes, count, counts)
    tail = [base + 2 + codes + int(count) - 1] if counts else []
    return [base] + [base + 2 + int(t) for t in tokens] + tail + [base + 1]


def video_text(tokens: Sequence[int], count: int | None = None) -> str:
    """The same block as text (for logs and for tokenizers that know the added tokens)."""
    return (
        VIDEO_START
        + "".join(act_token(int(t)) for t in tokens)
        + (count_token(int(count)) if count else "")
        + VIDEO_END
    )


@dataclass(frozen=True)
class Prompt:
    prefix: str  # before the video block: fixed per bundle, KV-cached
    suffix: str  # after the video block, up to where the label starts

    def text(self, tokens: Sequence[int], count: int | None = None) -> str:
        return self.prefix + video_text(tokens, count) + self.suffix


def build(labels: Sequence[str]) -> Prompt:
    if not labels:
        raise ValueError("the label set is empty")
    for label in labels:
        if "\n" in label or ";" in label:
            raise ValueError(f"label {label!r} may not contain a newline or ';'")
    instruction = INSTRUCTION.format(labels="; ".join(labels))
    prefix = f"<|im_start|>system\n{SYSTEM}{END_OF_TURN}\n<|im_start|>user\n{instruction}\n"
    suffix = f"{END_OF_TURN}\n<|im_start|>assistant\n{ANSWER_LABEL}"
    return Prompt(prefix, suffix)


def label_continuation(label: str) -> str:
    """What follows `Label:` for a label, up to and including the newline that ends it (the
    newline tells 'drink' from 'drink water' in the label trie)."""
    return f" {label}\n"


def answer(label: str, explanation: str) -> str:
    """The full training target after the suffix."""
    explanation = " ".join(explanation.split())
    return f"{label_continuation(label)}{ANSWER_EXPLANATION} {explanation}{END_OF_TURN}"


def parse_explanation(generated: str) -> str:
    """The explanation sentence from text generated after the label line."""
    text = generated.split(END_OF_TURN)[0]
    if ANSWER_EXPLANATION in text:
        text = text.split(ANSWER_EXPLANATION, 1)[1]
    return " ".join(text.split())
