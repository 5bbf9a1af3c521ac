"""A user-facing text in both languages the counter speaks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Text:
    """A text in English and Chinese (a plain string in a flow file is used for both)."""

    en: str
    zh: str

    def view(self) -> dict[str, str]:
        """The text as clients receive it: ``{"en": ..., "zh": ...}``."""
        return {"en": self.en, "zh": self.zh}
