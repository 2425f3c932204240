"""Checks for the exercises of notebooks/06_use_and_ship.ipynb: each reads what the learner
made (a GGUF file's header, the chat's history, a TRL configuration), not a number typed."""

from __future__ import annotations

from pathlib import Path

from ftkit.course.check.core import NOT_ANSWERED, CheckResult
from ftkit.export import gguf_file_type
from ftkit.task import Task, parse_json


def gguf_of_type(answer, kind: str, not_these=()) -> CheckResult:
    """Exercise 06.1: `answer` is the path of a GGUF file of type `kind`, read from its
    header, that the learner wrote (none of `not_these`, the files the notebook wrote)."""
    if answer is None:
        return NOT_ANSWERED
    path = Path(str(answer))
    if not path.is_file():
        return CheckResult(False, f"No file at {path}. Pass the path export_gguf returned.")
    try:
        found = gguf_file_type(path)
    except Exception as error:  # not a GGUF file, a truncated one, or no type in its header
        return CheckResult(False, f"{path.name} is not a readable GGUF file ({error}).")
    if found != kind:
        return CheckResult(False, f"{path.name} is {found}, not {kind}: pass "
                                  f"gguf_type={kind!r} to export_gguf.")  # fmt: skip
    if any(path.resolve() == Path(p).resolve() for p in not_these):
        return CheckResult(False, "That is the file section 5 wrote: export one yourself, to "
                                  "another path.")  # fmt: skip
    return CheckResult(True, f"{path.name}: {found} (read from its header), "
                             f"{path.stat().st_size / 1e6:.0f} MB. Now run check_gguf on it: "
                             "how many answers match the merged model's?")  # fmt: skip


def compared_in_chat(answer, task: Task, asked_already=()) -> CheckResult:
    """Exercise 06.2: the chat holds a side-by-side comparison of a question of the learner's
    own (not one the notebook asked); says whether the fine-tune kept to the task's format."""
    if answer is None:
        return NOT_ANSWERED
    comparisons = getattr(answer, "comparisons", None)
    if comparisons is None:
        return CheckResult(False, "Pass the chat itself (the ChatBox of section 2).")
    own = [(q, a) for q, a in comparisons if q not in set(asked_already)]
    if not own:
        return CheckResult(False, 'Ask a question of your own first: chat.compare("...").')
    question, answers = own[-1]
    tuned, base = answers.get("fine-tuned", ""), answers.get("base", "")
    if not tuned or not base:
        return CheckResult(False, "That comparison was stopped before both answered: ask again.")
    if task.answer == "json":
        parsed = parse_json(tuned)
        kept = parsed is not None and all(f in parsed for f in task.label_fields)
        how = ("answered in the task's JSON format, whatever you asked: training narrowed it "
               "(notebook 05 measures this forgetting)." if kept else
               "answered outside the task's format: it kept some general behaviour.")  # fmt: skip
    else:
        how = "answered in the training data's voice; compare it with the base model's."
    same = " The two answers are identical." if tuned == base else ""
    return CheckResult(True, f"On {question!r} the fine-tune {how}{same} The base model "
                             "is the same weights with the adapter off.")  # fmt: skip


def trl_recipe(answer, method: str, rank: int, lr: float) -> CheckResult:
    """Exercise 06.3: `answer` is `TrainConfig(...).to_trl()` for a `method` run with LoRA
    rank `rank` and learning rate `lr`; read from the TRL and peft configurations."""
    if answer is None:
        return NOT_ANSWERED
    sft, lora = getattr(answer, "args", None), getattr(answer, "peft_config", None)
    if not hasattr(sft, "learning_rate"):
        return CheckResult(False, "Pass what to_trl() returned (the TRL and peft settings).")
    if abs(float(sft.learning_rate) - lr) > 1e-12:
        return CheckResult(False, f"The TRL config's learning rate is {sft.learning_rate}, not "
                                  f"{lr}: set lr= in TrainConfig.")  # fmt: skip
    if lora is None or getattr(lora, "r", None) != rank:
        got = getattr(lora, "r", None)
        return CheckResult(False, f"The LoRA rank is {got}, not {rank}: set lora_r=.")
    quantized = getattr(answer, "quantization_config", None) is not None
    if (method == "lora") == quantized:
        return CheckResult(False, 'A LoRA run loads its base unquantised: method="lora", not '
                                  '"qlora".')  # fmt: skip
    how = "SFTTrainer(model, args=..., peft_config=...) trains it."
    return CheckResult(True, f"Rank {rank}, learning rate {lr:g}, a 16-bit base: {how}")
