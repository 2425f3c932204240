"""Seeing which tokens train: an HTML preview of an example, token by token.

Display-layer companion of `ftkit.formatting`: every token of a tokenized example,
trained ones highlighted, special tokens and line breaks made visible.
"""

from __future__ import annotations

import html

from ftkit.formatting import IGNORE_INDEX, TokenizedExample, tokenize_example


def _token_pieces(tokenized: TokenizedExample, tokenizer) -> list[str]:
    """The text of each token: its span of the rendered text, or its decoding."""
    if not tokenized.offsets:
        return [tokenizer.decode([i]) for i in tokenized.input_ids]
    pieces, seen = [], 0
    for (start, end), token_id in zip(tokenized.offsets, tokenized.input_ids, strict=True):
        piece = tokenized.text[max(start, seen) : end]
        pieces.append(piece or tokenizer.decode([token_id]))
        seen = max(seen, end)
    return pieces


def preview_html(tokenized: TokenizedExample, tokenizer) -> str:
    """HTML showing every token: trained ones green, the rest grey, special ones visible."""
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    spans = []
    for i, (piece, token_id, label) in enumerate(
        zip(_token_pieces(tokenized, tokenizer), tokenized.input_ids, tokenized.labels, strict=True)
    ):
        trained = label != IGNORE_INDEX
        shown = piece.replace("<", "⟨").replace(">", "⟩") if token_id in special else piece
        shown = html.escape(shown).replace("\n", "↵<br>")
        title = f"token {i}, id {token_id}, {'trained' if trained else 'not trained'}"
        style = "background:#b7e4b0" if trained else "background:#eeeeee;color:#888888"
        spans.append(f'<span class="{"trained" if trained else "context"}" title="{title}" '
                     f'style="{style};border-right:1px solid #fff">{shown}</span>')  # fmt: skip
    note = f", truncated from {tokenized.full_length}" if tokenized.truncated else ""
    return (
        '<div class="ftkit-preview" style="font-family:monospace;font-size:12px">'
        f"<p><b>{len(tokenized.input_ids)} tokens{note}, {tokenized.num_trained} trained.</b> "
        '<span style="background:#b7e4b0">trained (has a label)</span> '
        '<span style="background:#eeeeee;color:#888888">context (label -100)</span> '
        "⟨special token⟩, ↵ newline</p>"
        f'<div style="white-space:pre-wrap;line-height:1.6">{"".join(spans)}</div></div>'
    )


def show_preview(example, tokenizer, max_length: int | None = None):
    """Display `preview_html` in a notebook; takes a TokenizedExample or a raw example."""
    from IPython.display import HTML

    if not isinstance(example, TokenizedExample):
        example = tokenize_example(example, tokenizer, max_length)
    return HTML(preview_html(example, tokenizer))
