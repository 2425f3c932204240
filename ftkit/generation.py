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

from ftkit.fast import cache_name, fast_generation

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
    keeps one copy of those, not one per prompt: see `ftkit.fast.shared_prefix.prefilled`;
    greedy and unconstrained, rows that finished leave the batch (`_decode`). The same
    replies up to rounding; without it, `generate` reads and writes the padded batch.
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


# Tokens: below this, reading the prefix once saves too little. Prompts without a system
# prompt still share the chat template's own system turn and user header (24 tokens for
# SmolLM2: 40% of a 58-token support-ticket prompt). Read once, zero-shot on 64 test tickets
# took 11.3 -> 9.0 s in bf16 (AVX512-BF16) and 21.9 -> 17.0 s in fp32 (the AVX2 stand-in),
# the fine-tune's 24.1 -> 19.8 s, the same replies (mean of two runs each, one thread).
MIN_SHARED_PREFIX = 16


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
    settings = dict(eos_token_id=stops.tolist(), pad_token_id=pad, **sampling)
    # Rows that finished early go out of the batch (greedy: every row's tokens as in the
    # whole batch), where the cache and the logits processor can follow the others.
    compact = share_prefix and temperature == 0
    prompts_read = (input_ids, attention_mask, prefix) if share_prefix else ()  # else generate's
    started = time.perf_counter()
    with torch.inference_mode(), fast_generation(model, *prompts_read) as cached:
        output, gave_up = _decode(model, tokenizer, input_ids, attention_mask, cached,
                                  max_new_tokens, stops, settings, give_up_after,
                                  logits_processor, compact)  # fmt: skip
    seconds = (time.perf_counter() - started) / len(prompts)
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


COMPACT_FROM = 4  # rows: a batch this small finishes together, whatever its rows' lengths


def _decode(model, tokenizer, input_ids, attention_mask, cached, max_new_tokens, stops,
            settings, give_up_after, logits_processor, compact):  # fmt: skip
    """`generate`'s sequences for the batch (rows, prompt width + new tokens; padding after a
    row's stop token) and the rows given up on (`_GiveUpOnJson.stopped`).

    With `compact`, a call ends once at most half its rows are still writing, and those go on
    in a call of their own from the cache of the first, with the batch's logits processor
    where it can follow them (`keep_rows`, as `ftkit.constrained`'s can; where it cannot,
    the batch runs whole): a batch costs its rows' new tokens, not its rows times its
    longest reply. Notebook 04's few-shot replies average 33 tokens in a batch whose longest
    has 61: without this, 45% of the rows' decoding steps wrote padding. Greedy decoding
    gives every row the tokens it gets in the whole batch. On 64 test tickets, one core of
    the AVX512-BF16 CPU, after `prefilled`: 3-shot 29.6 -> 22.0 s, 3 retrieved shots 66.9 ->
    58.6 s.
    """
    rows, width = input_ids.shape
    extra, processor = {}, None
    if logits_processor is not None:  # one for the batch: it keeps each row's state
        processor = logits_processor()
        extra["logits_processor"] = LogitsProcessorList([processor])
        compact = compact and hasattr(processor, "keep_rows")
    output = torch.full((rows, width + max_new_tokens), settings["pad_token_id"],
                        dtype=input_ids.dtype, device=input_ids.device)  # fmt: skip
    output[:, :width] = input_ids
    kept = torch.arange(rows, device=input_ids.device)  # each row of this call: its batch row
    tokens, mask, gave_up, longest = input_ids, attention_mask, {}, width
    while True:
        written = tokens.shape[1] - width
        giving_up = _GiveUpOnJson(tokenizer, width, give_up_after, stops) if give_up_after else None
        halving = None
        if compact and len(kept) >= COMPACT_FROM:
            halving = _FewLeft(width, stops, giving_up)
        criteria = [c for c in (giving_up, halving) if c is not None]
        result = model.generate(
            input_ids=tokens,
            attention_mask=mask,
            max_new_tokens=max_new_tokens - written,
            return_dict_in_generate=True,
            **({"stopping_criteria": StoppingCriteriaList(criteria)} if criteria else {}),
            **cached,
            **settings,
            **extra,
        )
        sequences = result.sequences
        longest = max(longest, sequences.shape[1])
        output[kept, : sequences.shape[1]] = sequences
        for row, count in (giving_up.stopped if giving_up else {}).items():
            gave_up[int(kept[row])] = count
        if halving is None or not halving.fired or sequences.shape[1] - width >= max_new_tokens:
            break
        writing = halving.writing.nonzero().squeeze(1)
        if processor is not None:
            processor.keep_rows(writing.tolist())
        cache = getattr(result, cache_name())
        cache.batch_select_indices(writing)
        ones = mask.new_ones(len(mask), sequences.shape[1] - mask.shape[1])
        tokens, mask = sequences[writing], torch.cat([mask, ones], dim=1)[writing]
        kept, cached = kept[writing], {cache_name(): cache}
    return output[:, :longest], gave_up


class _FewLeft(StoppingCriteria):
    """A `generate` stopping criterion: ends the call (every row) once at most half its rows
    are still writing (no stop token yet, not given up on); `writing` says which, `fired`
    whether it ended the call."""

    def __init__(self, width: int, stops: torch.Tensor, giving_up: _GiveUpOnJson | None) -> None:
        self.width, self.stops, self.giving_up = width, stops, giving_up
        self.fired, self.writing = False, None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        writing = ~torch.isin(input_ids[:, self.width :], self.stops).any(dim=1)
        if self.giving_up is not None:
            writing[list(self.giving_up.stopped)] = False
        self.writing = writing
        self.fired = bool(writing.any()) and 2 * int(writing.sum()) <= len(writing)
        return torch.full_like(writing, self.fired)


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
