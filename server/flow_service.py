"""Runs a session's business flow: the script, enforced on the server.

A :class:`FlowRun` per session follows the flow of its business
(:class:`business.flow.Flow`, loaded by :mod:`business.loader`). Steps run in
the declared order: the first starts when the call starts; a step ends when
its conditions are met and the agent moves on (``step_next``), except that the
customer's refusal of consent or an unsuitable product stops the flow at once.
Every client message names the step it is about: a message for another step
than the current one (a skip, a repeat, a reorder), a second signature or a
signature over another document hash is refused, answered with ``error``
``step_refused`` and written to the timeline as ``step_refused``.

Each step kind says when it is done (:meth:`business.steps.Step.missing`) from
the facts this service gathers: what the customer and the agent did in the
step, and for identity steps the face, liveness and manual verdicts. The
service itself adds what needs the session: the consent is passed on to face
checks, a suitability step is checked when it starts, a signature is sealed
into a receipt (document hash, signature image, a face snapshot taken then,
the identity verdict, times) with the server's Ed25519 key, and the outcome
is booked with the core system (:class:`business.core_banking.CoreBanking`)
when the agent completes it.

Every step start and end is a session event (``step_started``,
``step_completed``; ``flow_stopped``, ``flow_completed``, ``flow_incomplete``
when the session ends first), hence on the recording's signed timeline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

from sqlmodel import Session as DbSession

from business.core_banking import CoreBanking
from business.exceptions import AnswerError
from business.flow import Flow
from business.steps import (
    ConsentStep,
    DisclosureStep,
    DocumentStep,
    OutcomeStep,
    QuestionnaireStep,
    SignatureStep,
    Step,
    StepFacts,
    SuitabilityStep,
)
from recorder.keys import SigningKey
from recorder.receipt import seal_receipt
from signaling import messages as m
from signaling.broker import Broker, Session
from signaling.exceptions import SignalingError

from .config import Config
from .db import Database, FlowRunRecord

logger = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: step kinds whose completion a signature needs, checked again when it is submitted
SIGNATURE_PREREQUISITES = ("identity", "disclosure", "document")

S = TypeVar("S", bound=Step)


class StepRefused(SignalingError):
    code = "step_refused"


@dataclass
class StepState:
    """One step's progress in a session."""

    status: str = "pending"  # pending | active | done | failed
    started_at: float | None = None
    ended_at: float | None = None
    #: what happened in the step (no biometric data): answers' score, receipt id, outcome...
    result: dict[str, Any] = field(default_factory=dict)
    agent_marked: bool = False
    customer_confirmed: bool = False


@dataclass
class FlowRun:
    """A session's flow: where it is, and what each step recorded."""

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

    def dump(self) -> str:
        """The run as JSON (its flow by business and version)."""
        return json.dumps(
            {
                "steps": [asdict(st) for st in self.steps],
                "current": self.current,
                "status": self.status,
                "reason": self.reason,
                "levels": self.levels,
                "signed": self.signed,
                "receipt": self.receipt,
                "outcome": self.outcome,
                "shown": self.shown,
                "manual": self.manual,
            },
            ensure_ascii=False,
            default=str,
        )

    @classmethod
    def load(cls, flow: Flow, session_id: str, text: str) -> FlowRun:
        """A run :meth:`dump` wrote, on ``flow`` (the same business and version)."""
        data = json.loads(text)
        steps = [StepState(**st) for st in data["steps"]]
        if len(steps) != len(flow.steps):
            raise ValueError("the flow's steps changed since the run was saved")
        return cls(
            flow,
            session_id,
            steps,
            current=int(data["current"]),
            status=str(data["status"]),
            reason=data["reason"],
            levels={k: (str(v[0]), int(v[1])) for k, v in data["levels"].items()},
            signed=bool(data["signed"]),
            receipt=data["receipt"],
            outcome=data["outcome"],
            shown=list(data["shown"]),
            manual=data["manual"],
        )


class FlowRuns:
    """Where flow runs in progress are kept between their changes: the database, written in
    order by one task, so that whichever node holds the session next finds the run as it was."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: dict[str, tuple[str, int, str | None]] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    def save(self, run: FlowRun) -> None:
        """Keep ``run`` as it is now (written soon, after the changes before it)."""
        self._put(run.session_id, (run.flow.business, run.flow.version, run.dump()))

    def forget(self, session_id: str) -> None:
        self._put(session_id, ("", 0, None))

    def _put(self, session_id: str, item: tuple[str, int, str | None]) -> None:
        self._pending[session_id] = item
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="flow-runs")

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                session_id, item = next(iter(self._pending.items()))
                del self._pending[session_id]
                try:
                    await self.db.run(functools.partial(_store, session_id=session_id, item=item))
                except Exception:
                    logger.exception("session %s: could not keep the flow's progress", session_id)

    async def get(self, session_id: str) -> FlowRunRecord | None:
        return await self.db.run(lambda s: s.get(FlowRunRecord, session_id))

    async def aclose(self) -> None:
        """Write what is pending, then stop. Safe to call twice."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        for _ in range(100):
            if not self._pending:
                break
            await asyncio.sleep(0.02)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


def _store(s: DbSession, *, session_id: str, item: tuple[str, int, str | None]) -> None:
    business, version, data = item
    row = s.get(FlowRunRecord, session_id)
    if data is None:
        if row is not None:
            s.delete(row)
        return
    if row is None:
        row = FlowRunRecord(session_id=session_id, business=business, version=version)
    row.data, row.updated_at = data, datetime.now(UTC)
    s.add(row)


class FlowService:
    """Every session's flow run: hooked to the broker's call start and session end, fed client messages."""

    def __init__(
        self,
        config: Config,
        broker: Broker,
        flows: dict[str, Flow],
        signing: SigningKey,
        core: CoreBanking,
        *,
        identity: Any = None,
        runs: FlowRuns | None = None,
    ) -> None:
        self.config = config
        #: where runs in progress are kept (None: in this process only)
        self.saved = runs
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
            run = self._runs.get(session.id) or await self._resume(session, flow)
            if run is None:
                run = self._runs[session.id] = FlowRun(
                    flow, session.id, [StepState() for _ in flow.steps]
                )
                run.status = "running"
                await self._event(
                    session.id,
                    "flow_started",
                    business=flow.business,
                    version=flow.version,
                    steps=[s.id for s in flow.steps],
                )
                await self._start(session, run)
            # a new call leg (the agent dropped and another took over): the script resumes where it was
        self._publish(session, run)

    async def _resume(self, session: Session, flow: Flow) -> FlowRun | None:
        """The run another node kept for this session (it held the session before), if any."""
        if self.saved is None:
            return None
        row = await self.saved.get(session.id)
        if row is None or row.business != flow.business or row.version != flow.version:
            return None
        try:
            run = FlowRun.load(flow, session.id, row.data)
        except (ValueError, KeyError, TypeError):
            logger.exception(
                "session %s: the kept flow progress cannot be read: starting over", session.id
            )
            return None
        self._runs[session.id] = run
        step = run.step
        await self._event(
            session.id,
            "flow_resumed",
            business=flow.business,
            version=flow.version,
            current=step.id if step else None,
            completed=[
                s.id for s, st in zip(flow.steps, run.steps, strict=True) if st.status == "done"
            ],
        )
        logger.info("session %s: flow resumed at %s", session.id, step.id if step else run.status)
        return run

    async def party_back(self, session: Session, role: str) -> None:
        """A party reconnected to the call: its page gets the flow's state again."""
        run = self._runs.get(session.id)
        if run is not None:
            self.broker.send(
                session,
                role,
                m.FlowState(session_id=session.id, state=self.state(session, run, role)),
            )

    async def session_closed(self, session: Session) -> None:
        run = self._runs.pop(session.id, None)
        self._locks.pop(session.id, None)
        if self.saved is not None:
            self.saved.forget(session.id)
        if run is not None and run.status == "running":
            step = run.step
            await self._event(
                session.id,
                "flow_incomplete",
                current=step.id if step else None,
                completed=[
                    s.id
                    for s, st in zip(run.flow.steps, run.steps, strict=True)
                    if st.status == "done"
                ],
                reason=session.end_reason or session.state,
            )

    def _identity_changed(self, session: Session) -> None:
        run = self._runs.get(session.id)
        if run is not None and run.step is not None and run.step.needs_identity:
            self._publish(session, run)

    # -- transitions ---------------------------------------------------------------------

    async def _start(self, session: Session, run: FlowRun) -> None:
        step = run.flow.steps[run.current]
        st = run.steps[run.current]
        st.status, st.started_at = "active", time.time()
        await self._event(
            session.id, "step_started", step=step.id, kind=step.kind, index=run.current
        )
        if isinstance(step, SuitabilityStep):
            await self._check_suitability(session, run, step, st)
        elif isinstance(step, DocumentStep):
            await self._show_document(session, run, step.document, pushed=False)

    async def _complete(self, session: Session, run: FlowRun, by: str) -> None:
        step = run.flow.steps[run.current]
        st = run.steps[run.current]
        st.status, st.ended_at = "done", time.time()
        await self._event(
            session.id,
            "step_completed",
            step=step.id,
            kind=step.kind,
            index=run.current,
            by=by,
            **_public(st.result),
        )
        run.current += 1
        if run.current >= len(run.flow.steps):
            run.status = "completed"
            await self._event(
                session.id, "flow_completed", business=run.flow.business, outcome=run.outcome
            )
        else:
            await self._start(session, run)

    async def _stop(self, session: Session, run: FlowRun, reason: str, **detail: object) -> None:
        step = run.flow.steps[run.current]
        st = run.steps[run.current]
        st.status, st.ended_at = "failed", time.time()
        run.status, run.reason = "stopped", reason
        await self._event(
            session.id, "flow_stopped", step=step.id, kind=step.kind, reason=reason, **detail
        )

    async def _refuse(self, session: Session, by: str, step_id: str, reason: str) -> NoReturn:
        logger.info("session %s: %s refused for step %s: %s", session.id, by, step_id, reason)
        await self._event(session.id, "step_refused", by=by, step=step_id, reason=reason)
        raise StepRefused(reason)

    def _current(self, run: FlowRun | None) -> Step:
        if run is None:
            raise StepRefused("there is no business flow in this session")
        step = run.step
        if step is None:
            raise StepRefused(
                f"the flow is {run.status}" + (f" ({run.reason})" if run.reason else "")
            )
        return step

    async def _expect(
        self, session: Session, run: FlowRun | None, by: str, step_id: str, kind: type[S]
    ) -> tuple[FlowRun, S, StepState]:
        """The current step, if the message is about it and of the right kind; else refused and logged."""
        try:
            step = self._current(run)
        except StepRefused as exc:
            await self._refuse(session, by, step_id, exc.message)
        assert run is not None
        if step_id != step.id:
            where = (
                "a later step"
                if _index(run.flow, step_id) > run.current
                else ("an earlier step" if _index(run.flow, step_id) >= 0 else "an unknown step")
            )
            await self._refuse(
                session,
                by,
                step_id,
                f"{step_id!r} is {where}: the current step is {step.id!r}; steps go in order",
            )
        if not isinstance(step, kind):
            await self._refuse(session, by, step_id, f"step {step.id!r} is a {step.kind} step")
        return run, step, run.steps[run.current]

    # -- agent ---------------------------------------------------------------------------

    async def agent_next(self, session: Session, step_id: str, agent: str) -> None:
        async with self._lock(session.id):
            run = self._runs.get(session.id)
            run, step, st = await self._expect(session, run, "agent", step_id, Step)
            missing = step.missing(self._facts(session, run, step, st))
            if missing:
                await self._refuse(
                    session, "agent", step_id, f"step {step.id!r} is not done: {missing.en}"
                )
            if isinstance(step, OutcomeStep):
                run.outcome = await step.book(
                    self.core,
                    session_id=session.id,
                    customer_name=session.display_name,
                    account_class=self.config.account_class,
                    customer_risk_level=next(iter(run.levels.values()), ("", 0))[0],
                )
                st.result = {"outcome": run.outcome}
            await self._complete(session, run, by=agent)
        self._publish(session, run)

    async def agent_mark_confirmed(self, session: Session, step_id: str, agent: str) -> None:
        async with self._lock(session.id):
            run, step, st = await self._expect(
                session, self._runs.get(session.id), "agent", step_id, DisclosureStep
            )
            if not st.agent_marked:
                st.agent_marked = True
                await self._event(
                    session.id, "disclosure_confirmed", step=step.id, by="agent", agent=agent
                )
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
                run = await self._consent(session, run, msg)
            elif isinstance(msg, m.DisclosureConfirm):
                run, step, st = await self._expect(
                    session, run, "customer", msg.step_id, DisclosureStep
                )
                if not st.customer_confirmed:
                    st.customer_confirmed = True
                    await self._event(
                        session.id, "disclosure_confirmed", step=step.id, by="customer"
                    )
            elif isinstance(msg, m.QuestionnaireSubmit):
                run, qstep, st = await self._expect(
                    session, run, "customer", msg.step_id, QuestionnaireStep
                )
                await self._answers(session, run, qstep, st, msg.answers)
            elif isinstance(msg, m.DocumentRead):
                run = await self._document_read(session, run, msg)
            elif isinstance(msg, m.SignatureSubmit):
                await self._sign(session, run, msg)
        if run is not None:
            self._publish(session, run)

    async def _consent(
        self, session: Session, run: FlowRun | None, msg: m.ConsentAccept | m.ConsentDecline
    ) -> FlowRun:
        run, step, st = await self._expect(session, run, "customer", msg.step_id, ConsentStep)
        if isinstance(msg, m.ConsentDecline):
            await self._event(session.id, "consent_declined", step=step.id)
            await self._stop(session, run, "consent_refused")
            return run
        if step.asks("face") and self.identity is not None:
            await self.identity.set_consent(session, msg.face)
        st.customer_confirmed = True
        st.result = {"consents": [c for c in step.consents if c != "face" or msg.face]}
        await self._event(session.id, "consent_given", step=step.id, consents=st.result["consents"])
        return run

    async def _document_read(
        self, session: Session, run: FlowRun | None, msg: m.DocumentRead
    ) -> FlowRun:
        run, step, st = await self._expect(session, run, "customer", msg.step_id, DocumentStep)
        doc = step.shown_document(run.flow)
        if msg.sha256 != doc.sha256:
            await self._refuse(
                session,
                "customer",
                step.id,
                "the document read is not the document of this step (hash differs)",
            )
        if not st.customer_confirmed:
            st.customer_confirmed = True
            st.result = {"document": doc.id, "sha256": doc.sha256}
            await self._event(
                session.id, "document_read", step=step.id, document=doc.id, sha256=doc.sha256
            )
        return run

    async def _answers(
        self,
        session: Session,
        run: FlowRun,
        step: QuestionnaireStep,
        st: StepState,
        answers: dict[str, str],
    ) -> None:
        try:
            score = step.score(answers)
        except AnswerError as exc:
            await self._refuse(session, "customer", step.id, exc.message)
        level = step.level(score)
        run.levels[step.id] = (level.code, level.rank)
        st.customer_confirmed = True
        st.result = {"score": score, "level": level.code}
        await self._event(
            session.id,
            "questionnaire_answered",
            step=step.id,
            score=score,
            level=level.code,
            answers=dict(sorted(answers.items())),
        )

    async def _check_suitability(
        self, session: Session, run: FlowRun, step: SuitabilityStep, st: StepState
    ) -> None:
        product = step.product
        level = run.levels.get(step.questionnaire)
        if level is None:
            await self._stop(session, run, "no_risk_assessment")
            return
        code, rank = level
        st.result = {
            "product": product.code,
            "product_risk": product.risk_level,
            "customer_level": code,
        }
        if not product.suits(rank):
            await self._stop(
                session,
                run,
                "unsuitable",
                product=product.code,
                product_risk=product.risk_level,
                customer_level=code,
            )
        else:
            st.customer_confirmed = True
            await self._event(
                session.id,
                "suitability_checked",
                step=step.id,
                suitable=True,
                product_risk=product.risk_level,
                customer_level=code,
            )

    async def _sign(self, session: Session, run: FlowRun | None, msg: m.SignatureSubmit) -> None:
        if (
            run is not None
            and run.signed
            and (
                not isinstance(run.step, SignatureStep) or run.steps[run.current].customer_confirmed
            )
        ):
            await self._refuse(
                session, "customer", msg.step_id, "the document has already been signed"
            )
        run, step, st = await self._expect(session, run, "customer", msg.step_id, SignatureStep)
        if st.customer_confirmed:
            await self._refuse(session, "customer", step.id, "the document has already been signed")
        doc = step.shown_document(run.flow)
        if msg.document_sha256 != doc.sha256:
            await self._refuse(
                session,
                "customer",
                step.id,
                "the signature is for another document than the one shown (hash differs)",
            )
        # prerequisites, checked again here whatever the flow file says
        for prior, pst in zip(run.flow.steps[: run.current], run.steps[: run.current], strict=True):
            if prior.kind in SIGNATURE_PREREQUISITES and pst.status != "done":
                await self._refuse(
                    session, "customer", step.id, f"{prior.kind} step {prior.id!r} is not done"
                )
        try:
            png = base64.b64decode(msg.image_png, validate=True)
        except (binascii.Error, ValueError):
            await self._refuse(
                session, "customer", step.id, "the signature image is not valid base64"
            )
        if not png.startswith(PNG_MAGIC) or len(png) < 100:
            await self._refuse(session, "customer", step.id, "the signature image is not a PNG")
        snapshot = None
        if self.identity is not None:
            snapshot = await self.identity.capture_jpeg(session)
        identity = self._identity_verdict(session, run)
        receipt = await asyncio.to_thread(
            seal_receipt,
            self.signing,
            session_id=session.id,
            flow={"business": run.flow.business, "version": run.flow.version},
            step_id=step.id,
            document={"id": doc.id, "title": doc.title.en, "sha256": doc.sha256},
            signature_png=png,
            face_snapshot_jpeg=snapshot,
            identity=identity,
            signed_at=datetime.now(UTC),
            extra={
                "agent": session.agent.username if session.agent else None,
                "customer": session.display_name,
            },
        )
        receipt_id = _receipt_id(receipt)
        digest = hashlib.sha256(receipt).hexdigest()
        if self.identity is not None:
            await self.identity.keep(
                session,
                "receipt",
                receipt,
                "application/json",
                {"step": step.id, "receipt_id": receipt_id},
            )
        run.signed = True
        st.customer_confirmed = True
        st.result = {
            "receipt_id": receipt_id,
            "receipt_sha256": digest,
            "document_sha256": doc.sha256,
        }
        run.receipt = {"receipt_id": receipt_id, "sha256": digest}
        await self._event(
            session.id,
            "signature_sealed",
            step=step.id,
            document=doc.id,
            document_sha256=doc.sha256,
            signature_sha256=hashlib.sha256(png).hexdigest(),
            snapshot_sha256=hashlib.sha256(snapshot).hexdigest() if snapshot else None,
            receipt_id=receipt_id,
            receipt_sha256=digest,
            identity=identity.get("method"),
        )
        self.broker.send(
            session,
            "customer",
            m.Receipt(
                receipt_id=receipt_id,
                filename=f"receipt-{session.id}-{step.id}.json",
                content=receipt.decode("utf-8"),
            ),
        )

    def _identity_verdict(self, session: Session, run: FlowRun) -> dict[str, Any]:
        state = self.identity.state(session.id) if self.identity is not None else None
        if state is not None and state.verification and state.verification.get("verified"):
            v = state.verification
            return {
                "method": "face",
                "verified": True,
                "score": v.get("score"),
                "distance": v.get("distance"),
                "threshold": v.get("threshold"),
                "liveness": bool(state.liveness and state.liveness.get("state") == "passed"),
            }
        manual = state.manual if state is not None and state.manual else run.manual
        if manual and manual.get("verified"):
            return {
                "method": "manual",
                "verified": True,
                "reason": manual.get("reason"),
                "by": manual.get("by"),
            }
        return {"method": "none", "verified": False}

    # -- conditions ----------------------------------------------------------------------

    def _facts(self, session: Session, run: FlowRun, step: Step, st: StepState) -> StepFacts:
        """What the step's conditions look at: the step's progress, and the identity verdicts if it asks."""
        if not step.needs_identity:
            return StepFacts(customer_done=st.customer_confirmed, agent_marked=st.agent_marked)
        state = self.identity.state(session.id) if self.identity is not None else None
        return StepFacts(
            customer_done=st.customer_confirmed,
            agent_marked=st.agent_marked,
            face_verified=bool(state and state.verification and state.verification.get("verified")),
            liveness_passed=bool(
                state and state.liveness and state.liveness.get("state") == "passed"
            ),
            manually_verified=bool(state and state.manual and state.manual.get("verified"))
            or bool(run.manual and run.manual.get("verified")),
        )

    # -- views ---------------------------------------------------------------------------

    async def _show_document(
        self,
        session: Session,
        run: FlowRun,
        document_id: str,
        *,
        pushed: bool,
        by: str | None = None,
    ) -> None:
        doc = run.flow.documents[document_id]
        run.shown.append(
            {"document": doc.id, "sha256": doc.sha256, "pushed": pushed, "at": time.time()}
        )
        await self._event(
            session.id, "document_shown", document=doc.id, sha256=doc.sha256, pushed=pushed, by=by
        )
        self.broker.send(
            session,
            "customer",
            m.DocumentShown(document={**doc.view(), "content": doc.content}, pushed=pushed),
        )

    def state(self, session: Session, run: FlowRun, role: str) -> dict[str, Any]:
        """The flow state as ``role`` (``customer`` or ``agent``) is shown it."""
        step = run.step
        steps = [
            {
                "id": s.id,
                "kind": s.kind,
                "title": s.title.view(),
                "status": st.status,
                "started_at": st.started_at,
                "ended_at": st.ended_at,
                "index": i,
            }
            for i, (s, st) in enumerate(zip(run.flow.steps, run.steps, strict=True))
        ]
        out: dict[str, Any] = {
            "business": run.flow.business,
            "title": run.flow.title.view(),
            "version": run.flow.version,
            "status": run.status,
            "reason": run.reason,
            "steps": steps,
            "current": None if step is None else self._view(session, run, step, role),
            "receipt": run.receipt,
            "outcome": run.outcome if role == "agent" else _outcome_view(run.outcome),
        }
        if role == "agent":
            out["documents"] = [
                {"id": d.id, "title": d.title.view()} for d in run.flow.documents.values()
            ]
        return out

    def _view(self, session: Session, run: FlowRun, step: Step, role: str) -> dict[str, Any]:
        st = run.steps[run.current]
        view = step.view(run.flow)
        view["customer_done"] = st.customer_confirmed
        if role == "agent":
            view["agent_marked"] = st.agent_marked
            missing = step.missing(self._facts(session, run, step, st))
            view["missing"] = missing.view() if missing is not None else None
            view["result"] = _public(st.result)
        return view

    def _publish(self, session: Session, run: FlowRun) -> None:
        if self.saved is not None:
            self.saved.save(run)  # every change is published: kept for the node that may take over
        for role in ("customer", "agent"):
            self.broker.send(
                session,
                role,
                m.FlowState(session_id=session.id, state=self.state(session, run, role)),
            )


def _index(flow: Flow, step_id: str) -> int:
    try:
        return flow.index(step_id)
    except (KeyError, ValueError):
        return -1


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "answers"}


def _outcome_view(outcome: dict[str, Any] | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    return {k: outcome[k] for k in ("type", "reference", "class", "terms") if k in outcome}


def _receipt_id(receipt: bytes) -> str:
    try:
        doc = json.loads(receipt)
        payload = doc.get("payload", doc)
        if isinstance(payload, str):
            payload = json.loads(payload)
        return str(payload.get("receipt_id") or payload.get("id"))
    except (ValueError, AttributeError):
        return hashlib.sha256(receipt).hexdigest()[:16]
