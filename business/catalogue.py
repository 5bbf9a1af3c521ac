"""The business types the counter offers: the one list, with their names in both languages.

Everything else reads it: the flow loader (one flow file per type), agents'
skills, appointments, the signaling broker's set of accepted businesses (the
server fills it from here) and the web pages (``GET /api/config`` serves the
names). Adding a business means adding a member here and its flow file.
"""

from __future__ import annotations

from enum import StrEnum

from .text import Text


class Business(StrEnum):
    """A business type; the value is its id (``account_opening``), also an agent's skill."""

    _value_: str
    #: the name customers choose it by and agents and auditors see
    label: Text
    #: the title of its flow when the flow file gives none
    flow_title: Text
    #: the outcome type its flow books (``account``, ``loan`` or ``order``)
    outcome: str

    def __new__(cls, value: str, label: Text, flow_title: Text, outcome: str) -> Business:
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label
        member.flow_title = flow_title
        member.outcome = outcome
        return member

    @classmethod
    def of(cls, type_id: str) -> Business:
        """The business whose id is ``type_id`` (as ``Business(type_id)``); ValueError if there is none."""
        for member in cls:
            if member.value == type_id:
                return member
        raise ValueError(f"{type_id!r} is not a business type")

    ACCOUNT_OPENING = (
        "account_opening",
        Text("Account opening", "远程开户"),
        Text("Personal account opening", "个人账户开立"),
        "account",
    )
    LOAN_SIGNING = (
        "loan_signing",
        Text("Loan signing", "贷款面签"),
        Text("Personal loan signing", "个人贷款面签"),
        "loan",
    )
    WEALTH_PRODUCT = (
        "wealth_product",
        Text("Wealth product purchase", "理财双录"),
        Text("Wealth product purchase", "理财产品购买"),
        "order",
    )


#: every business type id, in catalogue order
BUSINESS_TYPES: tuple[str, ...] = tuple(b.value for b in Business)
#: every outcome type a flow may book, in catalogue order
OUTCOME_TYPES: tuple[str, ...] = tuple(dict.fromkeys(b.outcome for b in Business))
