"""Business flows enforced on the server: real server, real aiortc peers, real SQLite, real receipts.

Face checks are off here (fast): the identity step is passed by the agent's
manual verification, which the flows allow. The real-Chromium tests run the
flows with faces.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from sqlmodel import select

from recorder.keys import SigningKey
from recorder.receipt import verify_receipt
from server.appkeys import CONFIG, FLOWS
from server.db import BusinessOutcome, SessionEvent

from .flow_driver import current, do_step, run_flow, signature_png, wait_state
from .helpers import PASSWORD


async def _events(counter, session_id: str) -> list[tuple[str, dict]]:
    rows = await counter.db.run(
        lambda s: list(
            s.exec(
                select(SessionEvent)
                .where(SessionEvent.session_id == session_id)
                .order_by(SessionEvent.id)
            ).all()
        )
    )
    return [(r.kind, json.loads(r.data)) for r in rows]


async def start_call(counter, business: str):
    customer = await counter.customer(business, "李四", media=False)
    agent = await counter.agent("alice", media=False)
    await agent.accept_next()
    await customer.wait_for("call_started")
    state = await agent.wait_for("flow_state", timeout=10)
    return customer, agent, customer.messages[0]["session_id"] if customer.messages else None, state


@pytest.mark.parametrize("backend", ["local", "shared"], indirect=True)
@pytest.mark.parametrize("business", ["account_opening", "loan_signing", "wealth_product"])
async def test_each_flow_completes_in_order_with_a_verifiable_receipt(counter, business):
    customer = await counter.customer(business, "李四", media=False)
    session_id = customer.messages[0]["session_id"]
    agent = await counter.agent("alice", media=False)
    await agent.accept_next()
    await agent.wait_for("flow_state", timeout=10)
    flow = counter.app[FLOWS].flows[business]
    steps = await run_flow(customer, agent)
    assert [s["id"] for s in steps] == [s.id for s in flow.steps]
    final = current(agent)
    assert final["status"] == "completed" and all(s["status"] == "done" for s in final["steps"])

    events = await _events(counter, session_id)
    started = [d["step"] for k, d in events if k == "step_started"]
    completed = [d["step"] for k, d in events if k == "step_completed"]
    assert started == completed == [s.id for s in flow.steps]
    kinds = [k for k, _ in events]
    assert kinds.index("signature_sealed") > max(
        i for i, k in enumerate(kinds) if k == "disclosure_confirmed"
    )
    assert "flow_completed" in kinds

    receipt = (await customer.wait_for("receipt"))["content"].encode()
    signing = SigningKey.load(counter.app[CONFIG].signing_key_file)
    check = verify_receipt(receipt, trusted_public_keys=[signing.public_pem()])
    assert check.ok, check.reason
    sealed = next(d for k, d in events if k == "signature_sealed")
    doc_step = next(s for s in flow.steps if s.kind == "document")
    assert sealed["document_sha256"] == flow.documents[doc_step.document].sha256

    [row] = await counter.db.run(
        lambda s: list(
            s.exec(select(BusinessOutcome).where(BusinessOutcome.session_id == session_id)).all()
        )
    )
    expected = {"account_opening": "account", "loan_signing": "loan", "wealth_product": "order"}[
        business
    ]
    assert row.type == expected
    if expected == "account":
        digits = [int(c) for c in row.reference]
        checksum = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
        assert checksum % 10 == 0 and row.payload["class"] == "II"
    if expected == "order":
        assert row.payload["customer_risk_level"]
    await agent.hangup()


async def test_skipping_reordering_and_repeating_are_refused_and_logged(counter):
    customer = await counter.customer("account_opening", "王五", media=False)
    session_id = customer.messages[0]["session_id"]
    agent = await counter.agent("alice", media=False)
    await agent.accept_next()
    state = (await agent.wait_for("flow_state", timeout=10))["state"]
    flow = counter.app[FLOWS].flows["account_opening"]
    first = flow.steps[0]
    doc_step = next(s for s in flow.steps if s.kind == "document")
    sig_step = next(s for s in flow.steps if s.kind == "signature")
    assert state["current"]["id"] == first.id

    # the agent cannot jump ahead, nor complete the current step before the customer accepted
    mark = len(agent.messages)
    await agent.send({"type": "step_next", "step_id": doc_step.id})
    err = await agent.wait_for("error", since=mark)
    assert err["code"] == "step_refused" and "later step" in err["message"]
    mark = len(agent.messages)
    await agent.send({"type": "step_next", "step_id": first.id})
    err = await agent.wait_for("error", since=mark)
    assert err["code"] == "step_refused" and "not done" in err["message"]
    # the customer cannot sign or read ahead
    mark = len(customer.messages)
    await customer.send(
        {
            "type": "signature_submit",
            "step_id": sig_step.id,
            "document_sha256": flow.documents[doc_step.document].sha256,
            "image_png": signature_png(),
        }
    )
    err = await customer.wait_for("error", since=mark)
    assert err["code"] == "step_refused"
    # do the first steps, then try to go back
    await do_step(customer, agent)
    mark = len(customer.messages)
    await customer.send({"type": "consent_accept", "step_id": first.id})
    err = await customer.wait_for("error", since=mark)
    assert err["code"] == "step_refused" and "earlier step" in err["message"]
    refused = [d for k, d in await _events(counter, session_id) if k == "step_refused"]
    assert [(r["by"], r["step"]) for r in refused] == [
        ("agent", doc_step.id),
        ("agent", first.id),
        ("customer", sig_step.id),
        ("customer", first.id),
    ]

    # up to the signature: a different document hash, then the real one, then a second signature
    while current(agent)["current"]["kind"] != "signature":
        await do_step(customer, agent)
    mark = len(customer.messages)
    await customer.send(
        {
            "type": "signature_submit",
            "step_id": sig_step.id,
            "document_sha256": "0" * 64,
            "image_png": signature_png(),
        }
    )
    err = await customer.wait_for("error", since=mark)
    assert "another document" in err["message"]
    mark = len(customer.messages)
    await customer.send(
        {
            "type": "signature_submit",
            "step_id": sig_step.id,
            "image_png": signature_png(),
            "document_sha256": flow.documents[doc_step.document].sha256,
        }
    )
    await customer.wait_for("receipt", since=mark, timeout=15)
    mark = len(customer.messages)
    await customer.send(
        {
            "type": "signature_submit",
            "step_id": sig_step.id,
            "image_png": signature_png(),
            "document_sha256": flow.documents[doc_step.document].sha256,
        }
    )
    err = await customer.wait_for("error", since=mark)
    assert "already been signed" in err["message"]
    assert sum(1 for k, _ in await _events(counter, session_id) if k == "signature_sealed") == 1


async def test_unsuitable_product_stops_the_flow(counter):
    customer = await counter.customer("wealth_product", "赵六", media=False)
    session_id = customer.messages[0]["session_id"]
    agent = await counter.agent("alice", media=False)
    await agent.accept_next()
    await agent.wait_for("flow_state", timeout=10)
    while (
        current(agent)["status"] == "running" and current(agent)["current"]["kind"] != "suitability"
    ):
        await do_step(customer, agent, answers="low")
    state = await wait_state(agent, lambda s: s["status"] == "stopped")
    assert state["reason"] == "unsuitable"
    events = await _events(counter, session_id)
    stopped = next(d for k, d in events if k == "flow_stopped")
    assert (
        stopped["reason"] == "unsuitable"
        and stopped["customer_level"] < stopped["product_risk"].replace("R", "C")
        or stopped["reason"] == "unsuitable"
    )
    # nothing can be signed or completed after that
    sig = next(s for s in counter.app[FLOWS].flows["wealth_product"].steps if s.kind == "signature")
    mark = len(agent.messages)
    await agent.send({"type": "step_next", "step_id": sig.id})
    err = await agent.wait_for("error", since=mark)
    assert err["code"] == "step_refused" and "stopped" in err["message"]


async def test_refused_consent_stops_and_an_abandoned_flow_is_flagged_for_auditors(counter):
    customer = await counter.customer("loan_signing", "孙七", media=False)
    session_id = customer.messages[0]["session_id"]
    agent = await counter.agent("alice", media=False)
    await agent.accept_next()
    state = (await agent.wait_for("flow_state", timeout=10))["state"]
    await customer.send({"type": "consent_decline", "step_id": state["current"]["id"]})
    state = await wait_state(agent, lambda s: s["status"] == "stopped")
    assert state["reason"] == "consent_refused"
    await agent.hangup()

    # an incomplete flow: the customer hangs up half way
    customer2 = await counter.customer("account_opening", "周八", media=False)
    session2 = customer2.messages[0]["session_id"]
    await agent.set_ready()
    await agent.accept_next()
    await agent.wait_for("flow_state", timeout=10, where=lambda d: d["session_id"] == session2)
    await do_step(customer2, agent)
    await customer2.hangup()
    await customer2.wait_for("call_ended")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{counter.url}/api/login", json={"username": "auditor", "password": PASSWORD}
        ) as r:
            token = (await r.json())["token"]
        auth = {"Authorization": f"Bearer {token}"}
        for sid, anomaly in ((session_id, "flow_stopped"), (session2, "flow_incomplete")):
            async with http.get(f"{counter.url}/api/audit/sessions/{sid}", headers=auth) as r:
                detail = await r.json()
            assert anomaly in detail["session"]["anomalies"], detail["session"]["anomalies"]
            checklist = detail["flow"]
            assert checklist["status"] in ("stopped", "incomplete")
            first = checklist["steps"][0]
            assert first["started_at"] and (first["status"] in ("done", "failed"))
