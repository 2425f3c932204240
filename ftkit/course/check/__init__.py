"""Exercise checks: call one with your answer and get a verdict plus a friendly hint.

Every notebook ends with exercises; `from ftkit.course import check` gives the checks of
all of them, one module per notebook (`ftkit.course.check.nb01` ... `nb06`). A check never
raises on a wrong answer: it returns a `CheckResult` that shows as a green or amber box in
a notebook (and as one line in a terminal), saying what is right or giving a hint that
points at the section to re-read. The truth is computed with ftkit itself, so a check stays
right when the catalog, the estimator or the data change.
"""

from ftkit.course.check.core import NOT_ANSWERED, CheckResult
from ftkit.course.check.nb01 import SCENARIOS, largest_qlora_batch, t4_dtype, when_to_finetune
from ftkit.course.check.nb02 import (
    ALPACA_RECORD,
    alpaca_to_chat,
    end_of_turn_token,
    trained_token_count,
)
from ftkit.course.check.nb03 import best_checkpoint, lora_trainable_params, nf4_bits_per_param
from ftkit.course.check.nb04 import (
    F1_PREDICTIONS,
    F1_REFERENCES,
    finetune_margin,
    macro_f1_by_hand,
    prompt_token_savings,
)
from ftkit.course.check.nb05 import lora_rank, patience, warmup_rescue
from ftkit.course.check.nb06 import compared_in_chat, gguf_of_type, trl_recipe

__all__ = [
    "ALPACA_RECORD",
    "F1_PREDICTIONS",
    "F1_REFERENCES",
    "NOT_ANSWERED",
    "SCENARIOS",
    "CheckResult",
    "alpaca_to_chat",
    "best_checkpoint",
    "compared_in_chat",
    "end_of_turn_token",
    "finetune_margin",
    "gguf_of_type",
    "largest_qlora_batch",
    "lora_rank",
    "lora_trainable_params",
    "macro_f1_by_hand",
    "nf4_bits_per_param",
    "patience",
    "prompt_token_savings",
    "t4_dtype",
    "trained_token_count",
    "trl_recipe",
    "warmup_rescue",
    "when_to_finetune",
]
