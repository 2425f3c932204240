"""A training callback the tests share: something done at the end of one step."""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback


class AtStep(TrainerCallback):
    """Calls `action` at the end of step `at`: a click on Stop, a SIGINT, the runner's Ctrl-C."""

    def __init__(self, at: int, action: Callable[[], object]) -> None:
        self.at, self.action = at, action

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            self.action()
