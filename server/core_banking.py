"""The core system of this server's own: outcomes kept in our database.

A real deployment talks to the bank's core banking / loan / wealth systems
(ESB, REST, MQ...) through an adapter of the shape
:class:`business.core_banking.CoreBanking`. Those cannot exist here, so
:class:`LocalCoreBanking` keeps the records in the ``businessoutcome`` table:
it is the stand-in the tests and the demo use.
"""

from __future__ import annotations

import json
import secrets
from datetime import date
from typing import Any

from business.core_banking import CoreBanking

from .db import BusinessOutcome, Database

#: issuer prefix of the demo card/account numbers (not a real bank's BIN)
ACCOUNT_PREFIX = "621999"


def luhn_digit(digits: str) -> str:
    """The Luhn check digit to append to ``digits`` (card and account numbers)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 0:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return str((10 - total % 10) % 10)


class LocalCoreBanking(CoreBanking):
    """Outcomes stored in the ``businessoutcome`` table (development, demo and tests)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _store(
        self, session_id: str, type_: str, reference: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        row = BusinessOutcome(
            session_id=session_id,
            type=type_,
            reference=reference,
            data=json.dumps(data, ensure_ascii=False, sort_keys=True),
        )
        await self.db.run(lambda s: s.add(row))
        return {"reference": reference, **data}

    async def open_account(
        self, *, session_id: str, customer_name: str, account_class: str
    ) -> dict[str, Any]:
        body = ACCOUNT_PREFIX + "".join(secrets.choice("0123456789") for _ in range(12))
        number = body + luhn_digit(body)
        return await self._store(
            session_id, "account", number, {"class": account_class, "holder": customer_name}
        )

    async def sign_loan(
        self, *, session_id: str, customer_name: str, terms: dict[str, Any]
    ) -> dict[str, Any]:
        number = f"LN{date.today():%Y%m%d}{secrets.randbelow(10**8):08d}"
        return await self._store(
            session_id,
            "loan",
            number,
            {"borrower": customer_name, "terms": terms, "status": "signed"},
        )

    async def place_order(
        self,
        *,
        session_id: str,
        customer_name: str,
        product: dict[str, Any],
        amount: Any,
        customer_risk_level: str,
    ) -> dict[str, Any]:
        number = f"WO{date.today():%Y%m%d}{secrets.randbelow(10**8):08d}"
        return await self._store(
            session_id,
            "order",
            number,
            {
                "customer": customer_name,
                "product": product,
                "amount": amount,
                "customer_risk_level": customer_risk_level,
                "status": "placed",
            },
        )
