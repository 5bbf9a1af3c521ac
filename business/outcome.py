"""What a flow books at its end (an account, a loan contract, a wealth-product order), and the figures it quotes.

An outcome is written once, in the flow's outcome step, as a plain mapping
(``{"type": "loan", "terms": {...}}``). Documents and step texts quote its
figures as ``{{placeholders}}`` (:func:`outcome_variables`), so the contract
the customer signs cannot disagree with what is booked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from yaml.nodes import Node

from .catalogue import OUTCOME_TYPES, Business
from .reader import Entries, NodeReader
from .risk import PRODUCT_CODE_FORM, PRODUCT_CODE_RE

#: remote opening without on-site verification gives Type II/III accounts (银发〔2015〕392号)
ACCOUNT_CLASSES = ("II", "III")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
LOAN_TERMS = ("amount", "currency", "term_months", "annual_rate")

_TYPES_IN_WORDS = ", ".join(OUTCOME_TYPES[:-1]) + " or " + OUTCOME_TYPES[-1]


def read_outcome(reader: NodeReader, node: Node, business: Business) -> dict[str, Any]:
    """An outcome step's ``outcome``, of the type its business books."""
    spec = reader.mapping(node, "outcome")
    if "type" not in spec:
        reader.fail(node, f"outcome needs 'type' ({_TYPES_IN_WORDS})")
    type_node = spec["type"][1]
    kind = reader.string(type_node, "outcome type")
    if kind not in OUTCOME_TYPES:
        reader.fail(type_node, f"unknown outcome type {kind!r} ({_TYPES_IN_WORDS})")
    if kind != business.outcome:
        reader.fail(
            type_node,
            f"a {business.value} flow books an outcome of type {business.outcome!r}, not {kind!r}",
        )
    keys, read = _READERS[kind]
    spec = reader.mapping(node, f"{kind} outcome", ("type", *keys))
    return {"type": kind, **read(reader, node, spec)}


def _account(reader: NodeReader, node: Node, spec: Entries) -> dict[str, Any]:
    if "class" not in spec:
        return {}
    cls_node = spec["class"][1]
    cls = reader.string(cls_node, "account class")
    if cls not in ACCOUNT_CLASSES:
        reader.fail(
            cls_node,
            f"account class {cls!r}: a remote opening without on-site "
            "verification gives a Type II or III account (银发〔2015〕392号)",
        )
    return {"class": cls}


def _loan(reader: NodeReader, node: Node, spec: Entries) -> dict[str, Any]:
    if "terms" not in spec:
        reader.fail(
            node, "a loan outcome needs 'terms' (amount, currency, term_months, annual_rate)"
        )
    terms_node = spec["terms"][1]
    terms = reader.mapping(terms_node, "loan terms", LOAN_TERMS)
    reader.require(terms_node, terms, LOAN_TERMS, "loan terms need {name}")
    return {
        "terms": {
            "amount": reader.number(terms["amount"][1], "loan amount", 1, 1e9),
            "currency": reader.string(
                terms["currency"][1], "currency", CURRENCY_RE, "three upper-case letters (CNY)"
            ),
            "term_months": reader.integer(terms["term_months"][1], "term_months", 1, 360),
            # percent per year: 3.85 means 3.85 % (0.0385 would be a slip)
            "annual_rate": reader.number(
                terms["annual_rate"][1], "annual_rate (percent per year)", 0.1, 36
            ),
        }
    }


def _order(reader: NodeReader, node: Node, spec: Entries) -> dict[str, Any]:
    reader.require(node, spec, ("product_code", "amount"), "an order outcome needs {name}")
    return {
        "product_code": reader.string(
            spec["product_code"][1], "product_code", PRODUCT_CODE_RE, PRODUCT_CODE_FORM
        ),
        "amount": reader.number(spec["amount"][1], "order amount", 0.01, 1e10),
    }


_Reader = Callable[[NodeReader, Node, Entries], dict[str, Any]]
#: outcome type -> (its keys besides "type", how they are read)
_READERS: dict[str, tuple[tuple[str, ...], _Reader]] = {
    "account": (("class",), _account),
    "loan": (("terms",), _loan),
    "order": (("product_code", "amount"), _order),
}


def outcome_variables(outcome: dict[str, Any], account_class: str) -> dict[str, str]:
    """The ``{{placeholders}}`` an outcome offers to documents and texts, formatted as quoted.

    ``account_class`` is the class of an account outcome that fixes none (the server's setting).
    """
    if outcome["type"] == "account":
        return {"account_class": outcome.get("class", account_class)}
    if outcome["type"] == "order":
        return {"product_code": outcome["product_code"], "amount": money(outcome["amount"])}
    terms = outcome["terms"]
    amount, months = Decimal(str(terms["amount"])), terms["term_months"]
    rate = Decimal(str(terms["annual_rate"]))
    monthly = instalment(amount, rate, months)
    return {
        "amount": money(amount),
        "currency": terms["currency"],
        "term_months": str(months),
        "annual_rate": _plain(rate),
        "monthly_payment": money(monthly),
        "total_repayment": money(monthly * months),
        "total_interest": money(monthly * months - amount),
    }


def money(value: Decimal | int | float) -> str:
    """An amount as quoted in documents: ``100,000.00``."""
    return f"{Decimal(str(value)).quantize(Decimal('0.01'), ROUND_HALF_UP):,.2f}"


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def instalment(amount: Decimal, annual_rate_percent: Decimal, months: int) -> Decimal:
    """Equal monthly instalment (等额本息), rounded to the cent."""
    r = annual_rate_percent / Decimal(1200)
    payment = amount / months if r == 0 else amount * r / (1 - (1 + r) ** -months)
    return payment.quantize(Decimal("0.01"), ROUND_HALF_UP)
