"""A business's flow: its steps in the order they run, and the documents they show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .document import Document
from .steps import Step
from .text import Text


@dataclass(frozen=True)
class Flow:
    """One flow file, loaded and checked (:func:`business.loader.load_flow`)."""

    #: the business type id (:class:`business.catalogue.Business` value)
    business: str
    title: Text
    #: raised by the admin with every change: receipts and recordings name it
    version: int
    steps: tuple[Step, ...]
    #: every document of the flow, by id: those its steps show and those the agent may push
    documents: dict[str, Document]
    #: the flow file
    path: Path

    def step(self, step_id: str) -> Step:
        """The step with that id; KeyError if there is none."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def index(self, step_id: str) -> int:
        """The position of the step with that id; KeyError if there is none."""
        for i, step in enumerate(self.steps):
            if step.id == step_id:
                return i
        raise KeyError(step_id)
