"""Reading one flow file's YAML nodes into checked values, each error naming its line.

A :class:`NodeReader` works on the node tree of one file (``yaml.compose``,
not ``yaml.load``: the nodes keep their lines and no tag is resolved to an
object). Every method takes a node and a description of what it should be
(``"title of step 'terms'"``) and returns the value or raises
:class:`~business.exceptions.FlowError` at the node's line. It also fills
``{{placeholders}}`` in texts from :attr:`NodeReader.variables`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .exceptions import FlowError
from .text import Text

MAX_TEXT_CHARS = 20_000

ID_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z0-9_]*)\s*\}\}")

_TAG = "tag:yaml.org,2002:"

#: a mapping's entries: key -> (key node, value node)
Entries = dict[str, tuple[Node, Node]]


def line_of(node: Node) -> int:
    """The 1-based line a node starts on."""
    return int(node.start_mark.line) + 1


class NodeReader:
    """Checked values from the YAML nodes of the flow file ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.constructor = yaml.constructor.SafeConstructor()
        #: placeholder values (``{{name}}``), from the flow's outcome step
        self.variables: dict[str, str] = {}

    def fail(self, where: Node | int | None, message: str) -> NoReturn:
        """Raise a :class:`FlowError` at a node's line, a line number, or the whole file (None)."""
        line = line_of(where) if isinstance(where, Node) else where
        raise FlowError(self.path, line, message)

    def compose(self, data: bytes) -> Node | None:
        """The node tree of the file's bytes (None for an empty document)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fail(data[: exc.start].count(b"\n") + 1, "the file is not valid UTF-8")
        if text.startswith("\ufeff"):
            text = text[1:]
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
            self.fail(None if mark is None else mark.line + 1, f"YAML syntax error: {problem}")
        except yaml.reader.ReaderError as exc:
            self.fail(
                text.count("\n", 0, exc.position) + 1,
                f"YAML syntax error: character {exc.character!r} is not allowed",
            )
        except yaml.YAMLError as exc:
            self.fail(None, f"YAML error: {exc}")

    def mapping(self, node: Node, what: str, allowed: Iterable[str] | None = None) -> Entries:
        """A mapping's entries; plain-word keys only, none twice, and only ``allowed`` ones if given."""
        if not isinstance(node, MappingNode):
            self.fail(node, f"{what} must be a mapping (key: value)")
        allowed = tuple(allowed) if allowed is not None else None
        entries: Entries = {}
        for key, value in node.value:
            if not (isinstance(key, ScalarNode) and key.tag == _TAG + "str"):
                self.fail(key, f"keys of {what} must be plain words")
            name = str(key.value)
            if name in entries:
                self.fail(
                    key,
                    f"{name!r} is given twice in {what} (first at line {line_of(entries[name][0])})",
                )
            if allowed is not None and name not in allowed:
                self.fail(key, f"unknown key {name!r} in {what} (allowed: {', '.join(allowed)})")
            entries[name] = (key, value)
        return entries

    def require(self, node: Node, entries: Entries, names: Iterable[str], message: str) -> None:
        """Fail at ``node`` unless every name is in ``entries``; ``message`` is formatted with ``name``."""
        for name in names:
            if name not in entries:
                self.fail(node, message.format(name=repr(name)))

    def sequence(self, node: Node, what: str, max_items: int) -> list[Node]:
        """A list of at most ``max_items`` nodes."""
        if not isinstance(node, SequenceNode):
            self.fail(node, f"{what} must be a list")
        items = list(node.value)
        if len(items) > max_items:
            self.fail(items[max_items], f"{what}: more than {max_items} entries")
        return items

    def scalar(self, node: Node, what: str, tags: tuple[str, ...], expected: str) -> Any:
        """A scalar of one of the standard ``tags`` (``str``, ``int``...), constructed."""
        if not str(node.tag).startswith(_TAG):
            self.fail(node, f"{what}: YAML tags such as {node.tag} are not allowed")
        if not isinstance(node, ScalarNode) or node.tag not in tuple(_TAG + t for t in tags):
            self.fail(node, f"{what} must be {expected}")
        try:
            return self.constructor.construct_object(node)
        except yaml.YAMLError as exc:
            self.fail(node, f"{what}: {exc}")

    def string(
        self, node: Node, what: str, pattern: re.Pattern[str] | None = None, form: str = ""
    ) -> str:
        """A string, matching ``pattern`` in full if given (``form`` describes it)."""
        value = str(self.scalar(node, what, ("str",), "a string (quote it)"))
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(node, f"{what} {value!r} is not valid: {form}")
        return value

    def ident(self, node: Node, what: str) -> str:
        """An id: a lower-case letter, then up to 39 lower-case letters, digits or ``_``."""
        return self.string(
            node, what, ID_RE, "a lower-case letter, then up to 39 lower-case letters, digits or _"
        )

    def integer(self, node: Node, what: str, lo: int, hi: int) -> int:
        """A whole number from ``lo`` to ``hi``."""
        value = self.scalar(node, what, ("int",), "a whole number")
        if not lo <= value <= hi:
            self.fail(node, f"{what} must be between {lo} and {hi}, not {value}")
        return int(value)

    def number(self, node: Node, what: str, lo: float, hi: float) -> int | float:
        """A number (whole or not) from ``lo`` to ``hi``."""
        value = self.scalar(node, what, ("int", "float"), "a number")
        if not (lo <= value <= hi):  # also refuses .nan
            self.fail(node, f"{what} must be between {lo:g} and {hi:g}, not {value}")
        return value

    def boolean(self, node: Node, what: str) -> bool:
        """``true`` or ``false``."""
        return bool(self.scalar(node, what, ("bool",), "true or false"))

    def choices(self, node: Node, what: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        """A non-empty list of distinct values out of ``allowed``."""
        out: list[str] = []
        items = self.sequence(node, what, len(allowed))
        if not items:
            self.fail(node, f"{what} must not be empty (one or more of {', '.join(allowed)})")
        for item in items:
            value = self.string(item, what)
            if value not in allowed:
                self.fail(item, f"{what}: unknown {value!r} (one or more of {', '.join(allowed)})")
            if value in out:
                self.fail(item, f"{what}: {value!r} is listed twice")
            out.append(value)
        return tuple(out)

    def one_text(self, node: Node, what: str, fill: bool) -> str:
        """One language of a text: whatever was written (``No`` or ``2025`` stay text)."""
        if not str(node.tag).startswith(_TAG):
            self.fail(node, f"{what}: YAML tags such as {node.tag} are not allowed")
        if not isinstance(node, ScalarNode) or node.tag not in tuple(
            _TAG + t for t in ("str", "int", "float", "bool")
        ):
            self.fail(node, f"{what} must be a text")
        value = str(node.value).strip("\n") if node.style in ("|", ">") else str(node.value)
        if not value.strip():
            self.fail(node, f"{what} must not be empty")
        if fill:
            raw = value
            if node.style == "|":  # a literal block starts on the line after its "|"
                value = self.fill(
                    raw, lambda offset: line_of(node) + 1 + raw.count("\n", 0, offset)
                )
            else:
                value = self.fill(raw, lambda offset: line_of(node))
        if len(value) > MAX_TEXT_CHARS:
            self.fail(node, f"{what} is {len(value)} characters long, more than {MAX_TEXT_CHARS}")
        return value

    def text(self, node: Node, what: str, *, fill: bool = False) -> Text:
        """A plain text (both languages) or ``{en: ..., zh: ...}``; placeholders filled if ``fill``."""
        if isinstance(node, MappingNode):
            entries = self.mapping(node, what, ("en", "zh"))
            for lang in ("en", "zh"):
                if lang not in entries:
                    self.fail(node, f"{what} needs both 'en' and 'zh' (or one plain text for both)")
            return Text(
                self.one_text(entries["en"][1], f"{what} (en)", fill),
                self.one_text(entries["zh"][1], f"{what} (zh)", fill),
            )
        value = self.one_text(node, what, fill)
        return Text(value, value)

    def fill(self, text: str, line_at: Callable[[int], int], path: Path | None = None) -> str:
        """Replace ``{{name}}`` by the flow's values; an unknown name is an error at its line.

        ``line_at`` maps an offset in ``text`` to its line in ``path`` (default: the flow file).
        """

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.variables:
                known = (
                    ", ".join(sorted(self.variables))
                    or "none: this flow's outcome defines no values"
                )
                raise FlowError(
                    path or self.path,
                    line_at(match.start()),
                    f"unknown placeholder {match.group(0)} (known: {known})",
                )
            return self.variables[name]

        return PLACEHOLDER_RE.sub(sub, text)
