"""Risk assessment: the questionnaire's questions and levels, a product's risk, and how they are written.

A questionnaire's answers add up to a score; the score gives the customer's
level (C1..C5); a product of risk level Rn may be sold to a customer whose
level has rank n or more (适当性匹配).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from yaml.nodes import Node

from .reader import NodeReader
from .text import Text

MAX_QUESTIONS = 50
MAX_OPTIONS = 20
MAX_LEVELS = 10

LEVEL_CODE_RE = re.compile(r"[A-Z][A-Z0-9]{0,7}")
PRODUCT_CODE_RE = re.compile(r"[A-Z0-9][A-Z0-9_-]{0,31}")
RISK_LEVEL_RE = re.compile(r"R([1-9])")
PRODUCT_CODE_FORM = "upper-case letters, digits, - or _, at most 32"


@dataclass(frozen=True)
class Option:
    """One answer to a question, and what it adds to the score."""

    id: str
    text: Text
    score: int


@dataclass(frozen=True)
class Question:
    id: str
    text: Text
    options: tuple[Option, ...]

    def option(self, option_id: str) -> Option | None:
        """The option with that id, or None."""
        return next((o for o in self.options if o.id == option_id), None)


@dataclass(frozen=True)
class Level:
    """A customer risk level (C1..C5): reached by a total score of at least ``min_score``."""

    code: str
    min_score: int
    rank: int
    text: Text


@dataclass(frozen=True)
class Product:
    """A product's risk level (R1..R5); a customer may buy it when their level's rank >= ``risk_rank``."""

    code: str
    name: Text
    risk_level: str
    risk_rank: int

    def suits(self, customer_rank: int) -> bool:
        """Whether a customer whose level has this rank may buy the product."""
        return self.risk_rank <= customer_rank


def level_for(levels: Iterable[Level], score: int) -> Level:
    """The customer's level for a questionnaire total: the highest level whose ``min_score`` <= score.

    A score below every level gets the lowest level (the cautious answer);
    the loader makes sure that cannot happen with a shipped questionnaire.
    Raises ValueError without levels.
    """
    levels = tuple(levels)
    if not levels:
        raise ValueError("no levels to place a score in")
    reached = [level for level in levels if level.min_score <= score]
    if not reached:
        return min(levels, key=lambda level: (level.rank, level.min_score))
    return max(reached, key=lambda level: (level.rank, level.min_score))


def read_questions(reader: NodeReader, node: Node, what: str) -> tuple[Question, ...]:
    """The ``questions`` of a questionnaire: 1 to 50, each with 2 to 20 options, ids unique."""
    items = reader.sequence(node, f"questions of {what}", MAX_QUESTIONS)
    if not items:
        reader.fail(node, f"questions of {what} must not be empty")
    out: list[Question] = []
    for item in items:
        q = reader.mapping(item, "a question", ("id", "text", "options"))
        reader.require(item, q, ("id", "text", "options"), "a question needs {name}")
        qid = reader.ident(q["id"][1], "question id")
        if any(other.id == qid for other in out):
            reader.fail(q["id"][1], f"duplicate question id {qid!r} in {what}")
        options = _options(reader, q["options"][1], qid)
        out.append(Question(qid, reader.text(q["text"][1], f"question {qid!r}"), options))
    return tuple(out)


def _options(reader: NodeReader, node: Node, qid: str) -> tuple[Option, ...]:
    option_nodes = reader.sequence(node, f"options of question {qid!r}", MAX_OPTIONS)
    if len(option_nodes) < 2:
        reader.fail(node, f"question {qid!r} needs at least two options")
    options: list[Option] = []
    for onode in option_nodes:
        o = reader.mapping(onode, "an option", ("id", "text", "score"))
        reader.require(onode, o, ("id", "text", "score"), "an option needs {name}")
        oid = reader.ident(o["id"][1], "option id")
        if any(other.id == oid for other in options):
            reader.fail(o["id"][1], f"duplicate option id {oid!r} in question {qid!r}")
        options.append(
            Option(
                oid,
                reader.text(o["text"][1], f"option {oid!r}"),
                reader.integer(o["score"][1], f"score of option {oid!r}", 0, 1000),
            )
        )
    return tuple(options)


def read_levels(
    reader: NodeReader, node: Node, what: str, questions: tuple[Question, ...]
) -> tuple[Level, ...]:
    """The ``levels`` of a questionnaire, from the lowest to the highest, covering every possible total."""
    items = reader.sequence(node, f"levels of {what}", MAX_LEVELS)
    if not items:
        reader.fail(node, f"levels of {what} must not be empty")
    lowest = sum(min(o.score for o in q.options) for q in questions)
    highest = sum(max(o.score for o in q.options) for q in questions)
    out: list[Level] = []
    for i, item in enumerate(items):
        spec = reader.mapping(item, "a level", ("code", "min_score", "rank", "text"))
        reader.require(item, spec, ("code", "min_score"), "a level needs {name}")
        code = reader.string(
            spec["code"][1],
            "level code",
            LEVEL_CODE_RE,
            "an upper-case letter, then up to 7 upper-case letters or digits (C1)",
        )
        min_node = spec["min_score"][1]
        min_score = reader.integer(min_node, f"min_score of level {code}", 0, 1_000_000)
        rank = (
            reader.integer(spec["rank"][1], f"rank of level {code}", 1, 9)
            if "rank" in spec
            else i + 1
        )
        text = (
            reader.text(spec["text"][1], f"text of level {code}")
            if "text" in spec
            else Text(code, code)
        )
        if out:
            prev = out[-1]
            if code in {level.code for level in out}:
                reader.fail(spec["code"][1], f"duplicate level {code}")
            if min_score <= prev.min_score:
                reader.fail(
                    min_node,
                    f"levels go from the lowest to the highest: min_score of "
                    f"{code} must be above {prev.code}'s {prev.min_score}",
                )
            if rank <= prev.rank:
                reader.fail(
                    item,
                    f"levels go from the lowest to the highest: rank of {code} must be "
                    f"above {prev.code}'s {prev.rank}",
                )
        elif min_score > lowest:
            reader.fail(
                min_node,
                f"the lowest level {code} starts at {min_score}, but a "
                f"customer can score {lowest}: every score needs a level",
            )
        if min_score > highest:
            reader.fail(
                min_node,
                f"level {code} can never be reached: the highest possible score is {highest}",
            )
        out.append(Level(code, min_score, rank, text))
    return tuple(out)


def read_product(reader: NodeReader, node: Node, what: str) -> Product:
    """A ``product``: ``{code, name, risk_level}`` with a risk level R1 to R9."""
    spec = reader.mapping(node, f"product of {what}", ("code", "name", "risk_level"))
    reader.require(node, spec, ("code", "name", "risk_level"), "the product needs {name}")
    code = reader.string(spec["code"][1], "product code", PRODUCT_CODE_RE, PRODUCT_CODE_FORM)
    risk = reader.string(spec["risk_level"][1], "risk_level", RISK_LEVEL_RE, "R1 to R9 (R1 lowest)")
    return Product(
        code, reader.text(spec["name"][1], f"name of product {code}"), risk, int(risk[1:])
    )
