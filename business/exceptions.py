"""Errors raised by the business package."""

from __future__ import annotations

from pathlib import Path


class BusinessError(Exception):
    """Base class: something about a business or its flow that cannot be used or done."""


class FlowError(BusinessError):
    """A flow file that cannot be used: ``str()`` is ``"{path}:{line}: {message}"``.

    ``line`` is 1-based, or None for what concerns the whole file (too large,
    unreadable); then ``str()`` is ``"{path}: {message}"``.
    """

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        super().__init__(path, line, message)
        self.path = Path(path)
        self.line = line
        self.message = message

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


class AnswerError(BusinessError):
    """A customer's questionnaire answers that cannot be scored; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
