"""From chat examples to what the model trains on: template, labels, packing, token counts.

`ftkit.data` gives conversations; this module shows what becomes of them:

- `render`: the exact text the model sees, through its own chat template (default system
  prompt included, if the template adds one);
- `tokenize_example`: input ids and completion-only labels (only assistant replies and the
  token that ends them train; never prompts, never padding), the same tokens TRL's
  `SFTTrainer` trains on (tests/test_formatting.py checks every shipped example);
- `collate` and `pack`: batches with right padding, or several examples per row without
  attention leaking between them;
- `tokenize_for_training`: a whole split as the trainer takes it, refused with the reason
  when nothing in it would train;

How many tokens that makes and how long training takes is `ftkit.estimates`; the
coloured token preview is `ftkit.course.preview`.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import torch

from ftkit.config import TrainingError

Messages = list[dict[str, str]]
IGNORE_INDEX = -100  # a label the loss skips (the default ignore_index of torch cross_entropy)


@dataclass
class TokenizedExample:
    """One conversation as token ids, with the labels the loss uses."""

    input_ids: list[int]  # the rendered conversation, tokenized (truncated to max_length)
    labels: list[int]  # input_ids where the token trains, IGNORE_INDEX (-100) elsewhere
    attention_mask: list[int]  # all ones: padding is added later, by `collate`
    offsets: list[tuple[int, int]]  # character span of each token in `text` (empty if unknown)
    text: str  # the conversation through the chat template, before truncation
    message_spans: list[tuple[str, int, int]]  # (role, first token, end token) per message
    full_length: int  # tokens before truncation
    source: str = ""  # where the example came from, for messages

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class PackedSequence:
    """Several tokenized examples in one row; `position_ids` restart at 0 for each."""

    input_ids: list[int]
    labels: list[int]  # as the examples', plus IGNORE_INDEX on each example's first token
    position_ids: list[int]  # 0, 1, ... within each example: tells attention where they start
    seq_lengths: list[int]  # length of each example, in order
    members: list[int]  # indices (in the list given to `pack`) of the examples packed here


def _messages(example) -> Messages:
    """Messages of an `ftkit.data.Example`, a JSONL row with "messages", or a message list."""
    messages = getattr(example, "messages", example)
    if isinstance(messages, dict):
        messages = messages.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(
            f"Expected a conversation (a non-empty list of {{'role', 'content'}} messages, or "
            f"an Example holding one), got {type(example).__name__}. Load data with "
            "ftkit.data, or pass [{'role': 'user', ...}, {'role': 'assistant', ...}]."
        )
    return messages


def _source(example) -> str:
    """Where an example came from: an Example's `source`, or a JSONL row's "id"."""
    if isinstance(example, dict):
        return str(example.get("id") or example.get("source") or "")
    return str(getattr(example, "source", "") or "")


def render(example, tokenizer, add_generation_prompt: bool = False) -> str:
    """The conversation as text through the model's chat template: what the model really sees."""
    return tokenizer.apply_chat_template(
        _messages(example), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _prefix_length(tokenizer, messages: Messages, ids: list[int], generation: bool) -> int:
    """How many leading tokens of `ids` the rendering of `messages` alone accounts for."""
    if not messages:
        return 0
    prefix = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=generation
    )["input_ids"]
    common = next((i for i, (a, b) in enumerate(zip(prefix, ids, strict=False)) if a != b), None)
    if common is None:
        return min(len(prefix), len(ids))
    warnings.warn(
        f"The chat template renders the first {len(messages)} message(s) differently alone than "
        f"inside the whole conversation (from {tokenizer.decode(prefix[common:])!r}). Training "
        "starts where they diverge, as in TRL; at inference the model sees the other version.",
        stacklevel=3,
    )
    return common


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids (as `apply_chat_template` makes them) and character offsets when available."""
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoding["input_ids"], [tuple(span) for span in encoding["offset_mapping"]]
    except (NotImplementedError, ValueError):  # slow tokenizers have no offsets
        return tokenizer(text, add_special_tokens=False)["input_ids"], []


def tokenize_example(example, tokenizer, max_length: int | None = None) -> TokenizedExample:
    """Tokenize one conversation with completion-only labels (assistant replies train).

    Method: the conversation is rendered and tokenized once; then, for each message, the
    conversation up to it is rendered alone and the tokens it shares with the whole
    (longest common prefix) mark where that message ends. An assistant reply trains from
    the end of the prompt with its generation header (`messages[:i]` rendered with
    `add_generation_prompt=True`) to the end of `messages[:i + 1]`: the reply's tokens, the
    end-of-turn token that closes it, and whatever the template puts after that before
    the next message (ChatML: "hello", "<|im_end|>", "\\n"). This is TRL 1.16's own rule
    for prompt/completion data (`SFTTrainer` with `completion_only_loss`), applied to every
    assistant turn, and it needs no `{% generation %}` markers, so it works with any chat
    template that renders a conversation's beginning the same way alone. System and user
    turns, the template's default system prompt and the generation header never train.
    Longer than `max_length`: the end is cut off (TRL's "keep_start") with labels aligned.
    """
    messages, source = _messages(example), _source(example)
    if not any(message.get("role") == "assistant" for message in messages):
        raise ValueError(
            f"Example {source or messages[0].get('content', '')[:40]!r} has no assistant "
            "message, so nothing in it would train. Add the reply the model should learn."
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids, offsets = _encode(tokenizer, text)
    labels, spans, start = [IGNORE_INDEX] * len(ids), [], 0
    for i, message in enumerate(messages):
        last = i == len(messages) - 1
        end = len(ids) if last else _prefix_length(tokenizer, messages[: i + 1], ids, False)
        if message["role"] == "assistant":
            header = _prefix_length(tokenizer, messages[:i], ids, True)
            labels[header:end] = ids[header:end]
        spans.append((message["role"], start, end))
        start = end
    keep = len(ids) if max_length is None else max_length
    return TokenizedExample(
        input_ids=ids[:keep],
        labels=labels[:keep],
        attention_mask=[1] * len(ids[:keep]),
        offsets=offsets[:keep],
        text=text,
        message_spans=[(role, min(a, keep), min(b, keep)) for role, a, b in spans],
        full_length=len(ids),
        source=source,
    )


def tokenize_examples(examples, tokenizer, max_length: int | None = None) -> list[TokenizedExample]:
    """Tokenize many examples; warn how many were truncated, drop those left with no reply.

    Like TRL, an example whose reply is cut off entirely by `max_length` is dropped (it has
    nothing to train on). A warning gives both counts; `ftkit.estimates.token_stats` counts them.
    """
    tokenized = [tokenize_example(example, tokenizer, max_length) for example in examples]
    truncated = [t for t in tokenized if t.truncated]
    kept = [t for t in tokenized if t.num_trained > 0]
    if truncated:
        warnings.warn(
            f"{len(truncated)} of {len(tokenized)} examples are longer than max_length="
            f"{max_length} tokens and were cut at the end (the model sees no ending for them); "
            f"{len(tokenized) - len(kept)} lost their whole reply and were dropped. Longest: "
            f"{max(t.full_length for t in truncated)} tokens. Raise max_length, or shorten "
            "those examples (see ftkit.estimates.token_stats).",
            stacklevel=2,
        )
    return kept


def collate(batch, tokenizer, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Stack examples into tensors, right-padded; padding gets label -100 and mask 0.

    For `PackedSequence` rows it also returns `position_ids`, and as `attention_mask` the
    4-D block-diagonal causal mask of `block_causal_mask` (bool: for "sdpa", the default).
    """
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    length = max(len(item.input_ids) for item in batch)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    position_ids = torch.arange(length).repeat(len(batch), 1)  # padding: positions go on
    for row, item in enumerate(batch):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention_mask[row, :n] = 1
        if isinstance(item, PackedSequence):
            position_ids[row, :n] = torch.tensor(item.position_ids)
    if not isinstance(batch[0], PackedSequence):
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    mask = block_causal_mask([item.seq_lengths for item in batch], length)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
            "attention_mask": mask}  # fmt: skip


def pack(tokenized: list[TokenizedExample], max_length: int) -> list[PackedSequence]:
    """Pack examples into rows of at most `max_length` tokens (best-fit decreasing, like TRL).

    No padding is wasted, but an example must not see the others in its row. Each row
    carries `position_ids` restarting at 0 per example (transformers' and TRL's
    padding-free convention) and `collate` adds an exact block-diagonal causal mask, so
    each example's logits equal those of the example run alone (tests/test_formatting.py,
    fp32, within 1e-4). Each example's first label is -100, so no example is trained to
    predict the start of the next. Two traps: a 2-D attention mask next to packed
    `position_ids` makes transformers ignore the boundaries, and so does a forward with
    `use_cache=True` (the config's default; TRL passes `use_cache=False`). The block mask
    avoids both. Measured on this 2-core CPU (LoRA r=16, bf16 embedded model, 160 shipped
    examples, forward + backward; both kinds of batch alternating in one process while
    other jobs loaded the machine: compare them, not the absolute speed): batches of 8
    padded to their longest (11% padding) 22 tokens/s, peak RSS 2.6 GiB; packed rows of 512,
    2 per batch (5% padding) 27 tokens/s, 2.9 GiB. Packing saves the padding and some
    per-step overhead; it costs attention over the whole row (the masked-out blocks are
    computed too, unless flash attention's variable-length kernels on a GPU skip them) and
    memory that grows with the tokens in a step: TRL's default max_length 1024 with batch 8
    puts 8,184 tokens in a step and peaked at 18.1 GiB here.
    """
    order = sorted(range(len(tokenized)), key=lambda i: -len(tokenized[i].input_ids))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(tokenized[i].input_ids)
        if n > max_length:
            raise ValueError(
                f"Example {i} ({tokenized[i].source or 'no source'}) has {n} tokens, more than "
                f"max_length={max_length}. Tokenize with tokenize_examples(..., max_length="
                f"{max_length}) first, or pack with a larger max_length."
            )
        fits = [r for r in range(len(rows)) if room[r] >= n]
        if fits:
            best = min(fits, key=lambda r: room[r])
            rows[best].append(i)
            room[best] -= n
        else:
            rows.append([i])
            room.append(max_length - n)
    return [_packed_row([tokenized[i] for i in row], row) for row in rows]


def _packed_row(items: list[TokenizedExample], members: list[int]) -> PackedSequence:
    labels = [[IGNORE_INDEX, *item.labels[1:]] for item in items]
    return PackedSequence(
        input_ids=list(itertools.chain(*(item.input_ids for item in items))),
        labels=list(itertools.chain(*labels)),
        position_ids=list(itertools.chain(*(range(len(item.input_ids)) for item in items))),
        seq_lengths=[len(item.input_ids) for item in items],
        members=members,
    )


def tokenize_for_training(
    examples, tokenizer, max_length: int, packing: bool = False, split: str = "train"
) -> list[TokenizedExample] | list[PackedSequence]:
    """What a training split becomes: tokenized with completion-only labels, packed if asked
    (train only), validation sorted by length; refuses data in which nothing would train.

    An empty split, a conversation that cannot be tokenized (no assistant message), or one
    in which every reply lies beyond `max_length` raise a `TrainingError` saying what to do,
    before any model work; truncation warnings are printed, not hidden.
    """
    examples = list(examples or [])
    if not examples:
        raise TrainingError(
            f"The {split} data is empty: there is nothing to train on. Check the file you "
            "loaded (ftkit.data.load_examples reports what it dropped and why)."
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            items = tokenize_examples(examples, tokenizer, max_length)
    except ValueError as error:
        raise TrainingError(f"Cannot train on the {split} data: {error}") from error
    for warning in caught:
        print(f"[ftkit] {split}: {warning.message}")
    if not items:
        raise TrainingError(
            f"No token of the {len(examples)} {split} examples would train: every assistant "
            f"reply lies beyond max_length={max_length} tokens, so all labels are "
            "masked (-100). Raise max_length (see ftkit.estimates.token_stats)."
        )
    if packing and split == "train":
        return pack(items, max_length)
    return items if split == "train" else sorted(items, key=lambda item: len(item.input_ids))


def block_causal_mask(
    seq_lengths: list[list[int]], length: int, dtype: torch.dtype = torch.bool
) -> torch.Tensor:
    """4-D attention mask (batch, 1, length, length): causal, and only within one example.

    bool (True = may attend) suits "sdpa"; pass a float dtype for "eager" attention (0 where
    allowed, the dtype's minimum elsewhere). Padding forms a block of its own.
    """
    owner = torch.full((len(seq_lengths), length), -1)
    for row, lengths in enumerate(seq_lengths):
        which = torch.arange(len(lengths)).repeat_interleave(torch.tensor(lengths))
        owner[row, : len(which)] = which
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    mask = ((owner[:, :, None] == owner[:, None, :]) & causal)[:, None]
    if dtype == torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
