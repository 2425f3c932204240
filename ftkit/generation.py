"""Asking a chat model questions: prompts through the chat template, batched and greedy.

The smallest piece of the evaluation story. Notebook 01 uses it to probe the
embedded model; the evaluation harness builds on it. What it adds over
`model.generate`: the chat template applied for you, left padding so a batch
of prompts of different lengths generates correctly, stopping at the end of
the assistant's turn, timing, and fast 4-bit generation on CPU that leaves
the model exactly as trainable as before (`ftkit.fast.fast_generation`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ftkit.fast import fast_generation

Messages = list[dict[str, str]]


@dataclass
class Reply:
    """One generated answer and what it cost."""

    prompt: str | Messages  # what was asked (a user message or a whole conversation)
    text: str  # the assistant's reply, special tokens removed
    prompt_tokens: int  # tokens in the templated prompt
    new_tokens: int  # tokens generated (up to and including end-of-turn)
    seconds: float  # wall time of the batch this reply was generated in, per reply
    gave_up: bool = False  # cut short: it could no longer become one JSON object


def to_messages(prompt: str | Messages, system_prompt: str | None = None) -> Messages:
    """Turn a user message (or a conversation) into chat messages, adding a system prompt."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end the assistant's turn: EOS plus the template's end-of-turn marker."""
    ids = {tokenizer.eos_token_id}
    for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)


def generate_replies(
    model,
    tokenizer,
    prompts: Sequence[str | Messages],
    system_prompt: str | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 8,
    share_prefix: bool = False,
    give_up_after: int | None = None,
    logits_processor: Callable[[], object] | None = None,
) -> list[Reply]:
    """Generate one reply per prompt, in batches, greedy unless `temperature` > 0.

    `share_prefix=True` reads a batch's prompts as one row without padding (a third to half
    of a padded batch of short prompts is padding), the tokens every prompt of the batch
    starts with (a long system prompt, few-shot examples) once, not once per prompt, and
    keeps one copy of those, not one per prompt: see `ftkit.fast.shared_prefix.prefilled`.
    The same replies up to rounding; without it, `generate` reads the padded batch.
    `give_up_after=N` stops a reply, once it has N tokens, as soon as it can no longer
    become one JSON object (`cannot_be_json`): a rambling base model then costs N tokens,
    not `max_new_tokens`, and every JSON score stays what it would have been.
    `logits_processor` makes a fresh transformers logits processor for each batch (for
    instance `ftkit.constrained.processor_factory`: answers in a fixed format).
    """
    replies = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        replies += _generate_batch(
            model, tokenizer, batch, system_prompt, max_new_tokens, temperature, share_prefix,
            give_up_after, logits_processor,
        )  # fmt: skip
    return replies


def cannot_be_json(text: str) -> bool:
    """True once no continuation of `text` can parse as one JSON object (`parse_json`'s rule):
    it starts with something other than "{", or a whole object is followed by more text.
    """
    text = text.lstrip()
    if not text:
        return False
    if text[0] != "{":
        return True
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return False  # unfinished (or broken inside: cannot tell cheaply, so keep going)
    return bool(text[end:].strip())


class _GiveUpOnJson(StoppingCriteria):
    """A `generate` stopping criterion: rows that `cannot_be_json` after `after` new tokens.

    `stopped` maps each row it stopped to how many tokens it had then."""

    def __init__(self, tokenizer, width: int, after: int, stops: torch.Tensor) -> None:
        self.tokenizer, self.width, self.after, self.stops = tokenizer, width, after, stops
        self.stopped: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.width :]
        done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        if new.shape[1] >= self.after:
            ended = torch.isin(new, self.stops).any(dim=1)  # finished its turn: not ours
            for row in range(len(new)):
                if row in self.stopped or ended[row]:
                    continue
                if cannot_be_json(self.tokenizer.decode(new[row], skip_special_tokens=True)):
                    self.stopped[row] = new.shape[1]
        done[list(self.stopped)] = True
        return done


MIN_SHARED_PREFIX = 64  # tokens; below this, reading the prefix once saves too little


def _generate_batch(
    model, tokenizer, prompts, system_prompt, max_new_tokens, temperature, share_prefix=False,
    give_up_after=None, logits_processor=None,
):  # fmt: skip
    texts = [
        tokenizer.apply_chat_template(
            to_messages(p, system_prompt), tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prefix = _common_prefix(ids) if share_prefix and len(ids) > 1 else 0
    if prefix < MIN_SHARED_PREFIX:
        prefix = 0
    width = max(len(row) for row in ids)
    # Padding goes on the left of what each prompt has of its own: before the prompt, or
    # between the shared prefix and the rest (the new tokens must follow every prompt).
    rows = [row[:prefix] + [pad] * (width - len(row)) + row[prefix:] for row in ids]
    masks = [[1] * prefix + [0] * (width - len(row)) + [1] * (len(row) - prefix) for row in ids]
    input_ids = torch.tensor(rows, device=model.device)
    attention_mask = torch.tensor(masks, device=model.device)
    sampling = (
        {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    )
    stops = torch.tensor(stop_token_ids(tokenizer), device=model.device)
    giving_up = _GiveUpOnJson(tokenizer, width, give_up_after, stops) if give_up_after else None
    extra = {"stopping_criteria": StoppingCriteriaList([giving_up])} if giving_up else {}
    if logits_processor is not None:
        extra["logits_processor"] = LogitsProcessorList([logits_processor()])
    prompts_read = (input_ids, attention_mask, prefix) if share_prefix else ()  # else generate's
    started = time.perf_counter()
    with torch.inference_mode(), fast_generation(model, *prompts_read) as cached:
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops.tolist(),
            pad_token_id=pad,
            **cached,
            **sampling,
            **extra,
        )
    seconds = (time.perf_counter() - started) / len(prompts)
    gave_up = giving_up.stopped if giving_up else {}
    new = output[:, width:]
    return [
        Reply(
            prompt,
            tokenizer.decode(row, skip_special_tokens=True).strip(),
            len(prompt_ids),
            gave_up.get(index) or _count_new(row, stops),
            seconds,
            index in gave_up,
        )
        for index, (prompt, row, prompt_ids) in enumerate(zip(prompts, new, ids, strict=True))
    ]


def _common_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens every row shares (at most the shortest row minus one, so each
    prompt keeps a token of its own for the model to read)."""
    shortest = min(len(row) for row in rows)
    for position in range(shortest - 1):
        token = rows[0][position]
        if any(row[position] != token for row in rows):
            return position
    return shortest - 1


def _count_new(row: torch.Tensor, stops: torch.Tensor) -> int:
    """Generated tokens up to and including the first stop token (the rest is padding)."""
    hits = torch.isin(row, stops).nonzero()
    return int(hits[0]) + 1 if len(hits) else int(row.numel())
