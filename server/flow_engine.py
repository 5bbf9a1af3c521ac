"""Runs a session's business flow (issue #5): the script, enforced on the server.

A :class:`FlowRun` per session follows the flow file of its business
(:mod:`server.flows`). Steps run in the declared order: the first starts when
the call starts; a step ends when its conditions are met and the agent moves
on (``step_next``), except that the customer's refusal of consent or an
unsuitable product stops the flow at once. Every client message names the
step it is about: a message for another step than the current one (a skip, a
repeat, a reorder), a second signature or a signature over another document
hash is refused, answered with ``error`` ``step_refused`` and written to the
timeline as ``step_refused``.

Conditions per kind:

``consent``       the customer accepted on screen (declining stops the flow: the
                  product cannot be sold without consent)
``identity``      face verified (and liveness passed when the step asks for it),
                  or the agent's manual verification (when allowed)
``disclosure``    the agent marked the spoken confirmation and the customer tapped
``questionnaire`` every question answered; the score gives the risk level
``suitability``   checked when the step starts: product risk <= customer level,
                  else the flow stops with the reason
``document``      the customer reached the end of the document shown (its hash)
``signature``     the customer signed that document's hash: the server seals a
                  receipt (document hash, signature image, a face snapshot taken
                  then, the identity verdict, times) with its Ed25519 key
``outcome``       performed when the agent completes it: account opened, loan
                  contract signed, order placed (:mod:`server.core_banking`)

Every step start and end is a session event (``step_started``,
``step_completed``; ``flow_stopped``, ``flow_completed``, ``flow_incomplete``
when the session ends first), hence on the recording's signed timeline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from recorder.keys import SigningKey
from recorder.receipt import seal_receipt
from signaling import messages as m
from signaling.broker import Broker, Session
from signaling.exceptions import SignalingError

from .config import Config
from .core_banking import CoreBanking
from .flows import Flow, Step, level_for

logger = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class StepRefused(SignalingError):
    code = "step_refused"


@dataclass
class StepState:
    status: str = "pending"  # pending | active | done | failed
    started_at: float | None = None
    ended_at: float | None = None
    #: what happened in the step (no biometric data): answers' score, receipt id, outcome...
    result: dict[str, Any] = field(default_factory=dict)
    agent_marked: bool = False
    customer_confirmed: bool = False


@dataclass
class FlowRun:
    flow: Flow
    session_id: str
    steps: list[StepState]
    current: int = 0
    status: str = "not_started"  # not_started | running | completed | stopped
    reason: str | None = None
    #: questionnaire step id -> level code and rank
    levels: dict[str, tuple[str, int]] = field(default_factory=dict)
    signed: bool = False
    receipt: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None
    shown: list[dict[str, Any]] = field(default_factory=list)
    #: the agent's manual verification when face checks are switched off on the server
    manual: dict[str, Any] | None = None

    @property
    def step(self) -> Step | None:
        if self.status != "running" or self.current >= len(self.flow.steps):
            return None
        return self.flow.steps[self.current]


class FlowService:
    def __init__(self, config: Config, broker: Broker, flows: dict[str, Flow], signing: SigningKey,
                 core: CoreBanking, *, identity: Any = None) -> None:
        self.config = config
        self.broker = broker
        self.flows = flows
        self.signing = signing
        self.core = core
        self.identity = identity
        self._runs: dict[str, FlowRun] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        if identity is not None:
            identity.listeners.append(self._identity_changed)

    def run(self, session_id: str) -> FlowRun | None:
        return self._runs.get(session_id)

    def _lock(self, session_id: str) -> asyncio.Lock:
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def _event(self, session_id: str, kind: str, /, **data: object) -> None:
        await self.broker.log_event(session_id, kind, **data)

    # -- broker hooks --------------------------------------------------------------------

    async def call_started(self, session: Session) -> None:
        flow = self.flows.get(session.business)
        if flow is None:
            return
        async with self._lock(session.id):
            run = self._runs.get(session.id)
            if run is None:
                run = self._runs[session.id] = FlowRun(flow, session.id, [StepState() for _ in flow.steps])
                run.status = "running"
                await self._event(session.id, "flow_started", business=flow.business, version=flow.version,
                                  steps=[s.id for s in flow.steps])
                await self._start(session, run)
            # a new call leg (the agent dropped and another took over): the script resumes where it was
        self._publish(session, run)

    async def session_closed(self, session: Session) -> None:
        run = self._runs.pop(session.id, None)
        self._locks.pop(session.id, None)
        if run is not None and run.status == "running":
            step = run.step
            await self._event(session.id, "flow_incomplete", current=step.id if step else None,
                              completed=[s.id for s, st in zip(run.flow.steps, run.steps, strict=True)
                                         if st.status == "done"],
                              reason=session.end_reason or session.state)

    def _identity_changed(self, session: Session) -> None:
        run = self._runs.get(session.id)
        if run is not None and run.step is not None and run.step.kind == "identity":
            self._publish(session, run)

    # -- transitions ---------------------------------------------------------------------

    async def _start(self, session: Session, run: FlowRun) -> None:
        step = run.flow.steps[run.current]
        st = run.steps[run.current]
        st.status, st.started_at = "active", time.time()
        await self._event(session.id, "step_started", step=step.id, kind=step.kind, index=run.current)
        if step.kind == "suitability":
            await self._check_suitability(session, run, step, st)
        elif step.kind == "document":
            await self._show_document(session, run, step.document or "", pushed=False)

    async def _complete(self, session: Session, run: FlowRun, by: str) -> None:
        step = run.flow.steps[run.current]
        st = run.steps[run.current]
        st.status, st.ended_at = "done", time.time()
        await self._event(session.id, "step_completed", step=step.id, kind=step.kind, index=run.current,
                          by=by, **_public(st.result))
        run.current += 1
        if run.current >= len(run.flow.steps):
            run.status = "completed"
            await self._event(session.id, "flow_completed", business=run.flow.business,
                              outcome=run.outcome)
        else:
            await self._start(session, run)

    async def _stop(self, session: Session, run: FlowRun, reason: str, **detail: object) -> None:
        step = run.flow.steps[run.current]
        st = run.steps[run.current]
        st.status, st.ended_at = "failed", time.time()
        run.status, run.reason = "stopped", reason
        await self._event(session.id, "flow_stopped", step=step.id, kind=step.kind, reason=reason, **detail)

    async def _refuse(self, session: Session, by: str, step_id: str, reason: str) -> None:
        logger.info("session %s: %s refused for step %s: %s", session.id, by, step_id, reason)
        await self._event(session.id, "step_refused", by=by, step=step_id, reason=reason)
        raise StepRefused(reason)

    def _current(self, run: FlowRun | None) -> Step:
        if run is None:
            raise StepRefused("there is no business flow in this session")
        step = run.step
        if step is None:
            raise StepRefused(f"the flow is {run.status}" + (f" ({run.reason})" if run.reason else ""))
        return step

    async def _expect(self, session: Session, run: FlowRun | None, by: str, step_id: str,
                      kinds: tuple[str, ...]) -> tuple[FlowRun, Step, StepState]:
        """The current step, if the message is about it and of the right kind; else refused and logged."""
        try:
            step = self._current(run)
        except StepRefused as exc:
            await self._refuse(session, by, step_id, exc.message)
        assert run is not None
        if step_id != step.id:
            where = "a later step" if _index(run.flow, step_id) > run.current else (
                "an earlier step" if _index(run.flow, step_id) >= 0 else "an unknown step")
            await self._refuse(session, by, step_id,
                               f"{step_id!r} is {where}: the current step is {step.id!r}; steps go in order")
        if step.kind not in kinds:
            await self._refuse(session, by, step_id, f"step {step.id!r} is a {step.kind} step")
        return run, step, run.steps[run.current]

    # -- agent ---------------------------------------------------------------------------

    async def agent_next(self, session: Session, step_id: str, agent: str) -> None:
        async with self._lock(session.id):
            run = self._runs.get(session.id)
            run, step, st = await self._expect(session, run, "agent", step_id, _ALL_KINDS)
            missing = self._missing(session, run, step, st)
            if missing:
                await self._refuse(session, "agent", step_id, f"step {step.id!r} is not done: {missing}")
            if step.kind == "outcome":
                run.outcome = await self._perform_outcome(session, run, step)
                st.result = {"outcome": run.outcome}
            await self._complete(session, run, by=agent)
        self._publish(session, run)

    async def agent_mark_confirmed(self, session: Session, step_id: str, agent: str) -> None:
        async with self._lock(session.id):
            run, step, st = await self._expect(session, self._runs.get(session.id), "agent", step_id,
                                               ("disclosure",))
            if not st.agent_marked:
                st.agent_marked = True
                await self._event(session.id, "disclosure_confirmed", step=step.id, by="agent", agent=agent)
        self._publish(session, run)

    async def push_document(self, session: Session, document_id: str, agent: str) -> None:
        run = self._runs.get(session.id)
        if run is None:
            raise StepRefused("there is no business flow in this session")
        if document_id not in run.flow.documents:
            raise StepRefused(f"no document {document_id!r} in this flow")
        await self._show_document(session, run, document_id, pushed=True, by=agent)
        self._publish(session, run)

    def record_manual(self, session: Session, verified: bool, reason: str, by: str) -> None:
        """Manual verification on a server without face checks (with them, identity state holds it)."""
        run = self._runs.get(session.id)
        if run is not None:
            run.manual = {"verified": verified, "reason": reason, "by": by}
            self._publish(session, run)

    # -- customer ------------------------------------------------------------------------

    async def customer_message(self, session: Session, msg: Any) -> None:
        async with self._lock(session.id):
            run = self._runs.get(session.id)
            if isinstance(msg, m.ConsentAccept | m.ConsentDecline):
                run, step, st = await self._expect(session, run, "customer", msg.step_id, ("consent",))
                if isinstance(msg, m.ConsentDecline):
                    await self._event(session.id, "consent_declined", step=step.id)
                    await self._stop(session, run, "consent_refused")
                else:
                    if "face" in step.consents and self.identity is not None:
                        await self.identity.set_consent(session, msg.face)
                    st.customer_confirmed = True
                    st.result = {"consents": [c for c in step.consents if c != "face" or msg.face]}
                    await self._event(session.id, "consent_given", step=step.id, consents=st.result["consents"])
            elif isinstance(msg, m.DisclosureConfirm):
                run, step, st = await self._expect(session, run, "customer", msg.step_id, ("disclosure",))
                if not st.customer_confirmed:
                    st.customer_confirmed = True
                    await self._event(session.id, "disclosure_confirmed", step=step.id, by="customer")
            elif isinstance(msg, m.QuestionnaireSubmit):
                run, step, st = await self._expect(session, run, "customer", msg.step_id, ("questionnaire",))
                await self._answers(session, run, step, st, msg.answers)
            elif isinstance(msg, m.DocumentRead):
                run, step, st = await self._expect(session, run, "customer", msg.step_id, ("document",))
                doc = run.flow.documents[step.document or ""]
                if msg.sha256 != doc.sha256:
                    await self._refuse(session, "customer", step.id,
                                       "the document read is not the document of this step (hash differs)")
                if not st.customer_confirmed:
                    st.customer_confirmed = True
                    st.result = {"document": doc.id, "sha256": doc.sha256}
                    await self._event(session.id, "document_read", step=step.id, document=doc.id,
                                      sha256=doc.sha256)
            elif isinstance(msg, m.SignatureSubmit):
                await self._sign(session, run, msg)
        if run is not None:
            self._publish(session, run)

    async def _answers(self, session: Session, run: FlowRun, step: Step, st: StepState,
                       answers: dict[str, str]) -> None:
        score = 0
        questions = {q.id: q for q in step.questions}
        unknown = sorted(set(answers) - set(questions))
        missing = sorted(set(questions) - set(answers))
        if unknown or missing:
            await self._refuse(session, "customer", step.id,
                               f"answer every question once (missing {missing}, unknown {unknown})")
        for qid, oid in answers.items():
            option = next((o for o in questions[qid].options if o.id == oid), None)
            if option is None:
                await self._refuse(session, "customer", step.id, f"{oid!r} is not an option of {qid!r}")
            assert option is not None
            score += option.score
        level = level_for(step, score)
        run.levels[step.id] = (level.code, level.rank)
        st.customer_confirmed = True
        st.result = {"score": score, "level": level.code}
        await self._event(session.id, "questionnaire_answered", step=step.id, score=score, level=level.code,
                          answers=dict(sorted(answers.items())))

    async def _check_suitability(self, session: Session, run: FlowRun, step: Step, st: StepState) -> None:
        product = step.product
        assert product is not None and step.questionnaire is not None
        level = run.levels.get(step.questionnaire)
        if level is None:
            await self._stop(session, run, "no_risk_assessment")
            return
        code, rank = level
        st.result = {"product": product.code, "product_risk": product.risk_level, "customer_level": code}
        if product.risk_rank > rank:
            await self._stop(session, run, "unsuitable", product=product.code,
                             product_risk=product.risk_level, customer_level=code)
        else:
            st.customer_confirmed = True
            await self._event(session.id, "suitability_checked", step=step.id, suitable=True,
                              product_risk=product.risk_level, customer_level=code)

    async def _sign(self, session: Session, run: FlowRun | None, msg: m.SignatureSubmit) -> None:
        if run is not None and run.signed and (run.step is None or run.step.kind != "signature"
                                               or run.steps[run.current].customer_confirmed):
            await self._refuse(session, "customer", msg.step_id, "the document has already been signed")
        run, step, st = await self._expect(session, run, "customer", msg.step_id, ("signature",))
        if st.customer_confirmed:
            await self._refuse(session, "customer", step.id, "the document has already been signed")
        doc_step = run.flow.step(step.document or "")
        doc = run.flow.documents[doc_step.document or ""]
        if msg.document_sha256 != doc.sha256:
            await self._refuse(session, "customer", step.id,
                               "the signature is for another document than the one shown (hash differs)")
        # prerequisites, checked again here whatever the flow file says
        for prior, pst in zip(run.flow.steps[: run.current], run.steps[: run.current], strict=True):
            if prior.kind in ("identity", "disclosure", "document") and pst.status != "done":
                await self._refuse(session, "customer", step.id, f"{prior.kind} step {prior.id!r} is not done")
        try:
            png = base64.b64decode(msg.image_png, validate=True)
        except (binascii.Error, ValueError):
            await self._refuse(session, "customer", step.id, "the signature image is not valid base64")
        if not png.startswith(PNG_MAGIC) or len(png) < 100:
            await self._refuse(session, "customer", step.id, "the signature image is not a PNG")
        snapshot = None
        if self.identity is not None:
            snapshot = await self.identity.capture_jpeg(session)
        identity = self._identity_verdict(session, run)
        receipt = await asyncio.to_thread(
            seal_receipt, self.signing, session_id=session.id,
            flow={"business": run.flow.business, "version": run.flow.version}, step_id=step.id,
            document={"id": doc.id, "title": doc.title.en, "sha256": doc.sha256},
            signature_png=png, face_snapshot_jpeg=snapshot, identity=identity,
            signed_at=datetime.now(UTC),
            extra={"agent": session.agent.username if session.agent else None,
                   "customer": session.display_name})
        receipt_id = _receipt_id(receipt)
        digest = hashlib.sha256(receipt).hexdigest()
        if self.identity is not None:
            await self.identity.keep(session, "receipt", receipt, "application/json",
                                     {"step": step.id, "receipt_id": receipt_id})
        run.signed = True
        st.customer_confirmed = True
        st.result = {"receipt_id": receipt_id, "receipt_sha256": digest, "document_sha256": doc.sha256}
        run.receipt = {"receipt_id": receipt_id, "sha256": digest}
        await self._event(session.id, "signature_sealed", step=step.id, document=doc.id,
                          document_sha256=doc.sha256, signature_sha256=hashlib.sha256(png).hexdigest(),
                          snapshot_sha256=hashlib.sha256(snapshot).hexdigest() if snapshot else None,
                          receipt_id=receipt_id, receipt_sha256=digest, identity=identity.get("method"))
        self.broker.send(session, "customer", m.Receipt(
            receipt_id=receipt_id, filename=f"receipt-{session.id}-{step.id}.json",
            content=receipt.decode("utf-8")))

    def _identity_verdict(self, session: Session, run: FlowRun) -> dict[str, Any]:
        state = self.identity.state(session.id) if self.identity is not None else None
        if state is not None and state.verification and state.verification.get("verified"):
            v = state.verification
            return {"method": "face", "verified": True, "score": v.get("score"), "distance": v.get("distance"),
                    "threshold": v.get("threshold"),
                    "liveness": bool(state.liveness and state.liveness.get("state") == "passed")}
        manual = state.manual if state is not None and state.manual else run.manual
        if manual and manual.get("verified"):
            return {"method": "manual", "verified": True, "reason": manual.get("reason"), "by": manual.get("by")}
        return {"method": "none", "verified": False}

    async def _perform_outcome(self, session: Session, run: FlowRun, step: Step) -> dict[str, Any]:
        spec = dict(step.outcome or {})
        kind = spec.get("type")
        name = session.display_name
        if kind == "account":
            return {"type": "account", **await self.core.open_account(
                session_id=session.id, customer_name=name,
                account_class=str(spec.get("class") or self.config.account_class))}
        if kind == "loan":
            return {"type": "loan", **await self.core.sign_loan(
                session_id=session.id, customer_name=name, terms=dict(spec.get("terms") or {}))}
        product = next((s.product for s in run.flow.steps if s.product is not None), None)
        level = next(iter(run.levels.values()), ("", 0))[0]
        return {"type": "order", **await self.core.place_order(
            session_id=session.id, customer_name=name,
            product={"code": product.code, "name": product.name.en, "risk_level": product.risk_level}
            if product else {}, amount=spec.get("amount"), customer_risk_level=level)}

    # -- conditions ----------------------------------------------------------------------

    def _missing(self, session: Session, run: FlowRun, step: Step, st: StepState) -> str | None:
        """Why the current step cannot be completed yet (None: it can)."""
        kind = step.kind
        if kind == "consent" and not st.customer_confirmed:
            return "the customer has not accepted yet"
        if kind == "identity":
            state = self.identity.state(session.id) if self.identity is not None else None
            manual = bool(state and state.manual and state.manual.get("verified")) or bool(
                run.manual and run.manual.get("verified"))
            face = bool(state and state.verification and state.verification.get("verified"))
            live = bool(state and state.liveness and state.liveness.get("state") == "passed")
            if manual and step.allow_manual:
                return None
            if not face:
                return "the customer's face is not verified" + (
                    " (or verify manually with a reason)" if step.allow_manual else "")
            if step.liveness and not live:
                return "the liveness check has not passed"
            return None
        if kind == "disclosure":
            need = []
            if "agent" in step.confirm_by and not st.agent_marked:
                need.append("mark the customer's spoken confirmation")
            if "customer" in step.confirm_by and not st.customer_confirmed:
                need.append("the customer has not confirmed on screen")
            return "; ".join(need) or None
        if kind == "questionnaire" and not st.customer_confirmed:
            return "the customer has not answered the questionnaire"
        if kind == "suitability" and not st.customer_confirmed:
            return "the product is not suitable"
        if kind == "document" and not st.customer_confirmed:
            return "the customer has not read the document to its end"
        if kind == "signature" and not st.customer_confirmed:
            return "the customer has not signed"
        return None

    # -- views ---------------------------------------------------------------------------

    async def _show_document(self, session: Session, run: FlowRun, document_id: str, *, pushed: bool,
                             by: str | None = None) -> None:
        doc = run.flow.documents[document_id]
        run.shown.append({"document": doc.id, "sha256": doc.sha256, "pushed": pushed, "at": time.time()})
        await self._event(session.id, "document_shown", document=doc.id, sha256=doc.sha256, pushed=pushed,
                          by=by)
        view = {"id": doc.id, "title": {"en": doc.title.en, "zh": doc.title.zh}, "sha256": doc.sha256,
                "content": doc.content}
        self.broker.send(session, "customer", m.DocumentShown(document=view, pushed=pushed))

    def state(self, session: Session, run: FlowRun, role: str) -> dict[str, Any]:
        step = run.step
        steps = []
        for i, (s, st) in enumerate(zip(run.flow.steps, run.steps, strict=True)):
            steps.append({"id": s.id, "kind": s.kind, "title": _text(s.title), "status": st.status,
                          "started_at": st.started_at, "ended_at": st.ended_at, "index": i})
        out: dict[str, Any] = {
            "business": run.flow.business, "title": _text(run.flow.title), "version": run.flow.version,
            "status": run.status, "reason": run.reason, "steps": steps,
            "current": None if step is None else self._view(session, run, step, role),
            "receipt": run.receipt, "outcome": run.outcome if role == "agent" else _outcome_view(run.outcome),
        }
        if role == "agent":
            out["documents"] = [{"id": d.id, "title": _text(d.title)} for d in run.flow.documents.values()]
        return out

    def _view(self, session: Session, run: FlowRun, step: Step, role: str) -> dict[str, Any]:
        st = run.steps[run.current]
        view: dict[str, Any] = {"id": step.id, "kind": step.kind, "title": _text(step.title)}
        if step.text is not None:
            view["text"] = _text(step.text)
        if step.kind == "consent":
            view["consents"] = list(step.consents)
        if step.kind == "questionnaire":
            view["questions"] = [{"id": q.id, "text": _text(q.text),
                                  "options": [{"id": o.id, "text": _text(o.text)} for o in q.options]}
                                 for q in step.questions]
        if step.kind in ("document", "signature") or (step.kind == "disclosure" and step.document):
            doc_id = step.document if step.kind != "signature" else run.flow.step(step.document or "").document
            doc = run.flow.documents[doc_id or ""]
            view["document"] = {"id": doc.id, "title": _text(doc.title), "sha256": doc.sha256}
        if step.kind == "suitability" and step.product is not None:
            view["product"] = {"code": step.product.code, "name": _text(step.product.name),
                               "risk_level": step.product.risk_level}
        view["customer_done"] = st.customer_confirmed
        if role == "agent":
            view["agent_marked"] = st.agent_marked
            view["missing"] = self._missing(session, run, step, st)
            view["result"] = _public(st.result)
        return view

    def _publish(self, session: Session, run: FlowRun) -> None:
        for role in ("customer", "agent"):
            self.broker.send(session, role, m.FlowState(session_id=session.id,
                                                        state=self.state(session, run, role)))


_ALL_KINDS = ("consent", "identity", "disclosure", "questionnaire", "suitability", "document", "signature",
              "outcome")


def _index(flow: Flow, step_id: str) -> int:
    try:
        return flow.index(step_id)
    except (KeyError, ValueError):
        return -1


def _text(t: Any) -> dict[str, str]:
    return {"en": t.en, "zh": t.zh}


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "answers"}


def _outcome_view(outcome: dict[str, Any] | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    return {k: outcome[k] for k in ("type", "reference", "class", "terms") if k in outcome}


def _receipt_id(receipt: bytes) -> str:
    import json

    try:
        doc = json.loads(receipt)
        payload = doc.get("payload", doc)
        if isinstance(payload, str):
            payload = json.loads(payload)
        return str(payload.get("receipt_id") or payload.get("id"))
    except (ValueError, AttributeError):
        return hashlib.sha256(receipt).hexdigest()[:16]
