"""Driving a business flow from both sides, as the customer's page and the agent's workbench do
(face checks off: the identity step is passed by the agent's manual verification)."""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageDraw


def signature_png() -> str:
    img = Image.new("RGBA", (600, 200), (255, 255, 255, 0))
    d = ImageDraw.Draw(img)
    d.line(
        [(40, 150), (120, 40), (200, 160), (300, 60), (420, 150), (560, 80)],
        fill=(10, 10, 60, 255),
        width=5,
    )
    out = io.BytesIO()
    img.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def status_of(state: dict, step_id: str) -> str:
    """The status of one step in a flow state's checklist."""
    [status] = [s["status"] for s in state["steps"] if s["id"] == step_id]
    return status


def current(participant, since: int = 0) -> dict:
    """The latest flow state the participant received."""
    states = [d for d in participant.messages[since:] if d.get("type") == "flow_state"]
    assert states, "no flow_state received"
    return states[-1]["state"]


async def wait_state(participant, predicate, since: int = 0, timeout: float = 10.0) -> dict:
    msg = await participant.wait_for(
        "flow_state", timeout=timeout, since=since, where=lambda d: predicate(d["state"])
    )
    return msg["state"]


async def do_step(customer, agent, *, answers: str = "high", expect_next: bool = True) -> dict:
    """Do what the current step needs from both sides, then have the agent complete it."""
    state = current(agent)
    step = state["current"]
    sid, kind = step["id"], step["kind"]
    mark = len(agent.messages)
    if kind == "consent":
        await customer.send({"type": "consent_accept", "step_id": sid, "face": False})
    elif kind == "identity":
        await agent.send(
            {
                "type": "manual_verification",
                "verified": True,
                "reason": "compared the ID card shown on camera with the customer",
            }
        )
    elif kind == "disclosure":
        await agent.send({"type": "mark_confirmed", "step_id": sid})
        await customer.send({"type": "disclosure_confirm", "step_id": sid})
    elif kind == "questionnaire":
        picks = {}
        for q in step["questions"]:
            # the customer state carries no scores: pick by position (options are in ascending risk)
            picks[q["id"]] = q["options"][-1 if answers == "high" else 0]["id"]
        await customer.send({"type": "questionnaire_submit", "step_id": sid, "answers": picks})
    elif kind == "document":
        await customer.send(
            {"type": "document_read", "step_id": sid, "sha256": step["document"]["sha256"]}
        )
    elif kind == "signature":
        await customer.send(
            {
                "type": "signature_submit",
                "step_id": sid,
                "document_sha256": step["document"]["sha256"],
                "image_png": signature_png(),
            }
        )
        await customer.wait_for("receipt", timeout=15)
    if kind not in ("suitability", "outcome"):
        await wait_state(
            agent,
            lambda s: (
                s["current"] and s["current"]["id"] == sid and s["current"]["missing"] is None
            ),
            since=mark,
        )
    if expect_next:
        mark = len(agent.messages)
        await agent.send({"type": "step_next", "step_id": sid})
        await wait_state(
            agent,
            lambda s: (
                status_of(s, sid) == "done" and (s["current"] is None or s["current"]["id"] != sid)
            ),
            since=mark,
        )
    return step


async def run_flow(customer, agent, **kw) -> list[dict]:
    done = []
    while current(agent)["status"] == "running":
        done.append(await do_step(customer, agent, **kw))
    return done
