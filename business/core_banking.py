"""The bank's core system, as far as a flow's outcome needs it: the interface an adapter implements.

A real deployment talks to the bank's core banking, loan and wealth systems
(ESB, REST, MQ...) through an adapter of this shape; the server's
``LocalCoreBanking`` keeps the records in its own database for development,
the demo and the tests.
"""

from __future__ import annotations

from typing import Any, Protocol


class CoreBanking(Protocol):
    """Books what a completed flow sells: an account, a signed loan, a wealth-product order."""

    async def open_account(
        self, *, session_id: str, customer_name: str, account_class: str
    ) -> dict[str, Any]:
        """Open a personal account; returns at least ``{"reference": number, "class": ...}``."""
        ...

    async def sign_loan(
        self, *, session_id: str, customer_name: str, terms: dict[str, Any]
    ) -> dict[str, Any]:
        """Mark the loan contract signed; returns ``{"reference": contract number, "terms": ...}``."""
        ...

    async def place_order(
        self,
        *,
        session_id: str,
        customer_name: str,
        product: dict[str, Any],
        amount: Any,
        customer_risk_level: str,
    ) -> dict[str, Any]:
        """Record a wealth-product order; returns ``{"reference": order number, ...}``."""
        ...
