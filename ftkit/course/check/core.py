"""Exercise checks, the shared part: the verdict a check returns.

Call a check with your answer and get a verdict plus a friendly hint.

Every notebook ends with exercises. A check never raises on a wrong answer: it
returns a `CheckResult` that shows as a green or amber box in a notebook (and
as one line in a terminal), saying what is right or giving a hint that points
at the section to re-read. The truth is computed with ftkit itself, so a check
stays right when the catalog or the estimator changes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass
class CheckResult:
    """The verdict on one exercise answer."""

    correct: bool  # True when the answer is right
    message: str  # praise with the reason, or a hint towards the answer

    def __bool__(self) -> bool:
        return self.correct

    def __repr__(self) -> str:
        return f"{'Correct' if self.correct else 'Not yet'}: {self.message}"

    def _repr_html_(self) -> str:
        colour, title = ("#e6f4ea", "Correct") if self.correct else ("#fff4e5", "Not yet")
        return (
            f'<div style="background:{colour};padding:8px 12px;border-radius:6px">'
            f"<b>{title}.</b> {html.escape(self.message)}</div>"
        )


NOT_ANSWERED = CheckResult(False, "Replace None with your answer, then run the cell again.")
