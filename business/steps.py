"""The steps of a flow, one class per kind: how each is written, shown, and when it is done.

Every step kind is a frozen dataclass that knows

- how it is read from a flow file (:meth:`Step.read`, given a :class:`StepSource`:
  the step's YAML entries, the steps before it and the flow's documents), with
  the keys it accepts (:attr:`Step.keys`) and needs (:attr:`Step.required`);
- what the clients are shown of it (:meth:`Step.view`);
- what still keeps it from being done (:meth:`Step.missing`), from plain
  :class:`StepFacts` the caller fills in: nothing here knows about sessions,
  brokers or face checks.

The rules that span steps (order, ``requires``) are the loader's
(:mod:`business.loader`); the per-session state is the server's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from yaml.nodes import Node

from .catalogue import Business
from .core_banking import CoreBanking
from .document import Document
from .exceptions import AnswerError
from .outcome import read_outcome
from .reader import Entries, NodeReader
from .risk import Level, Product, Question, level_for, read_levels, read_product, read_questions
from .text import Text

if TYPE_CHECKING:
    from .flow import Flow

#: what a consent step may ask for
CONSENTS = ("recording", "face")
#: who may have to confirm a disclosure
CONFIRMERS = ("agent", "customer")


@dataclass(frozen=True)
class StepFacts:
    """What is known about the current step's progress in a session, as plain values.

    The identity fields are filled only for steps whose :attr:`Step.needs_identity` is true.
    """

    #: the customer's part is done: accepted, confirmed on screen, answered, read to the end,
    #: signed; for a suitability step, the product was found suitable
    customer_done: bool = False
    #: the agent marked the customer's spoken confirmation (disclosure)
    agent_marked: bool = False
    #: the customer's face matched the reference photo
    face_verified: bool = False
    #: a liveness challenge passed
    liveness_passed: bool = False
    #: the agent verified the customer by eye, with a reason
    manually_verified: bool = False


S = TypeVar("S", bound="Step")


@dataclass
class StepSource:
    """One step of a flow file as it is read: its entries and what it may refer to."""

    reader: NodeReader
    #: the step's mapping node and its entries (key -> (key node, value node))
    node: Node
    entries: Entries
    #: what every step has, already read: id, title, line, requires, text
    common: dict[str, Any]
    #: the steps declared before this one
    earlier: Sequence[Step]
    documents: Mapping[str, Document]
    business: Business

    @property
    def what(self) -> str:
        """The step as error messages name it: ``step 'terms'``."""
        return f"step {self.common['id']!r}"

    def has(self, name: str) -> bool:
        return name in self.entries

    def value(self, name: str) -> Node:
        """The value node of the step's key ``name``."""
        return self.entries[name][1]

    def document_ref(self, name: str = "document") -> str:
        """The key ``name`` as the id of a document declared under ``documents``."""
        node = self.value(name)
        doc_id = self.reader.ident(node, f"document of {self.what}")
        if doc_id not in self.documents:
            known = ", ".join(self.documents) or "none declared"
            self.reader.fail(
                node, f"{self.what}: no document {doc_id!r} under 'documents' (declared: {known})"
            )
        return doc_id

    def earlier_step(self, name: str, kind: type[S]) -> S:
        """The key ``name`` as the id of an earlier step of the given kind."""
        node = self.value(name)
        ref = self.reader.ident(node, f"{kind.kind} of {self.what}")
        target = next((s for s in self.earlier if s.id == ref), None)
        if target is None:
            self.reader.fail(
                node,
                f"{self.what} names {ref!r}, which is not an earlier step: it must "
                f"name a {kind.kind} step declared before it",
            )
        if not isinstance(target, kind):
            self.reader.fail(
                node,
                f"{self.what} names {ref!r}, a {target.kind} step: it must name a {kind.kind} step",
            )
        return target


@dataclass(frozen=True, kw_only=True)
class Step:
    """What every step has; a subclass per kind adds its own keys, view and conditions."""

    #: the kind's name in flow files
    kind: ClassVar[str]
    #: the title of a step of this kind that gives none
    default_title: ClassVar[Text]
    #: keys a step of this kind accepts besides the common ones, and those it needs
    keys: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[tuple[str, ...]] = ()
    #: whether :meth:`missing` looks at the identity verdict (the caller fills it in only then)
    needs_identity: ClassVar[bool] = False

    id: str
    title: Text
    #: line of the step in its flow file
    line: int
    #: extra prerequisites (step ids); the declared order is always enforced too
    requires: tuple[str, ...] = ()
    #: what is read aloud and shown (any kind; required for a disclosure)
    text: Text | None = None

    @classmethod
    def read(cls, source: StepSource) -> Self:
        """The step from its flow-file entries (the common ones are in ``source.common``)."""
        return cls(**source.common)

    def shown_document(self, flow: Flow) -> Document | None:
        """The document this step shows or signs, if any."""
        return None

    def view(self, flow: Flow) -> dict[str, Any]:
        """What both clients are shown of the step (no scores, no per-session state)."""
        view: dict[str, Any] = {"id": self.id, "kind": self.kind, "title": self.title.view()}
        if self.text is not None:
            view["text"] = self.text.view()
        doc = self.shown_document(flow)
        if doc is not None:
            view["document"] = doc.view()
        view.update(self.details())
        return view

    def details(self) -> dict[str, Any]:
        """The kind's own part of :meth:`view`."""
        return {}

    def missing(self, facts: StepFacts) -> Text | None:
        """Why the step cannot be completed yet, in words for the agent (None: it can)."""
        return None


@dataclass(frozen=True, kw_only=True)
class ConsentStep(Step):
    """The customer accepts on screen what ``consents`` lists; declining stops the flow."""

    kind: ClassVar[str] = "consent"
    default_title: ClassVar[Text] = Text("Consent to recording", "录音录像授权")
    keys: ClassVar[tuple[str, ...]] = ("consents",)
    required: ClassVar[tuple[str, ...]] = ("consents",)

    #: what the customer consents to, a subset of CONSENTS
    consents: tuple[str, ...]

    @classmethod
    def read(cls, source: StepSource) -> Self:
        return cls(
            **source.common,
            consents=source.reader.choices(
                source.value("consents"), f"consents of {source.what}", CONSENTS
            ),
        )

    def asks(self, consent: str) -> bool:
        """Whether the step asks for this consent (``recording`` or ``face``)."""
        return consent in self.consents

    def details(self) -> dict[str, Any]:
        return {"consents": list(self.consents)}

    def missing(self, facts: StepFacts) -> Text | None:
        return (
            None
            if facts.customer_done
            else Text("the customer has not accepted yet", "客户尚未同意")
        )


@dataclass(frozen=True, kw_only=True)
class IdentityStep(Step):
    """The customer's face verified (and a liveness check passed when asked), or the agent's verification."""

    kind: ClassVar[str] = "identity"
    default_title: ClassVar[Text] = Text("Identity verification", "身份核验")
    keys: ClassVar[tuple[str, ...]] = ("liveness", "allow_manual")
    needs_identity: ClassVar[bool] = True

    #: a liveness challenge must pass as well
    liveness: bool = False
    #: a manual verification by the agent (with a reason) may replace it
    allow_manual: bool = True

    @classmethod
    def read(cls, source: StepSource) -> Self:
        flags: dict[str, Any] = {
            name: source.reader.boolean(source.value(name), f"{name} of {source.what}")
            for name in cls.keys
            if source.has(name)
        }
        return cls(**source.common, **flags)

    def missing(self, facts: StepFacts) -> Text | None:
        if facts.manually_verified and self.allow_manual:
            return None
        if not facts.face_verified:
            if self.allow_manual:
                return Text(
                    "the customer's face is not verified (or verify manually with a reason)",
                    "客户人脸尚未核验通过（或填写理由后人工核验）",
                )
            return Text("the customer's face is not verified", "客户人脸尚未核验通过")
        if self.liveness and not facts.liveness_passed:
            return Text("the liveness check has not passed", "活体检测尚未通过")
        return None


@dataclass(frozen=True, kw_only=True)
class DisclosureStep(Step):
    """A text read aloud and shown; the agent marks the spoken confirmation and/or the customer taps."""

    kind: ClassVar[str] = "disclosure"
    default_title: ClassVar[Text] = Text("Disclosure", "信息披露")
    keys: ClassVar[tuple[str, ...]] = ("confirm_by", "document")
    required: ClassVar[tuple[str, ...]] = ("text",)

    #: who must confirm (the agent marks the spoken confirmation, the customer taps)
    confirm_by: tuple[str, ...] = CONFIRMERS
    #: optional: the id of a document holding the full text of what is disclosed
    document: str | None = None

    @classmethod
    def read(cls, source: StepSource) -> Self:
        extra: dict[str, Any] = {}
        if source.has("confirm_by"):
            extra["confirm_by"] = source.reader.choices(
                source.value("confirm_by"), f"confirm_by of {source.what}", CONFIRMERS
            )
        if source.has("document"):
            extra["document"] = source.document_ref()
        return cls(**source.common, **extra)

    def shown_document(self, flow: Flow) -> Document | None:
        return None if self.document is None else flow.documents[self.document]

    def missing(self, facts: StepFacts) -> Text | None:
        need = []
        if "agent" in self.confirm_by and not facts.agent_marked:
            need.append(Text("mark the customer's spoken confirmation", "请标记客户的口头确认"))
        if "customer" in self.confirm_by and not facts.customer_done:
            need.append(Text("the customer has not confirmed on screen", "客户尚未在屏幕上确认"))
        if not need:
            return None
        return Text("; ".join(n.en for n in need), "；".join(n.zh for n in need))


@dataclass(frozen=True, kw_only=True)
class QuestionnaireStep(Step):
    """Questions the customer answers; the total score gives their risk level."""

    kind: ClassVar[str] = "questionnaire"
    default_title: ClassVar[Text] = Text("Questionnaire", "问卷")
    keys: ClassVar[tuple[str, ...]] = ("questions", "levels")
    required: ClassVar[tuple[str, ...]] = ("questions", "levels")

    questions: tuple[Question, ...]
    #: score -> level (the highest level whose min_score <= total), ascending
    levels: tuple[Level, ...]

    @classmethod
    def read(cls, source: StepSource) -> Self:
        questions = read_questions(source.reader, source.value("questions"), source.what)
        levels = read_levels(source.reader, source.value("levels"), source.what, questions)
        return cls(**source.common, questions=questions, levels=levels)

    def score(self, answers: Mapping[str, str]) -> int:
        """The total of the customer's answers (question id -> option id).

        Raises :class:`~business.exceptions.AnswerError` unless every question is
        answered once with one of its options.
        """
        questions = {q.id: q for q in self.questions}
        unknown = sorted(set(answers) - set(questions))
        missing = sorted(set(questions) - set(answers))
        if unknown or missing:
            raise AnswerError(f"answer every question once (missing {missing}, unknown {unknown})")
        score = 0
        for qid, oid in answers.items():
            option = questions[qid].option(oid)
            if option is None:
                raise AnswerError(f"{oid!r} is not an option of {qid!r}")
            score += option.score
        return score

    def level(self, score: int) -> Level:
        """The customer's level for a total score (see :func:`business.risk.level_for`)."""
        return level_for(self.levels, score)

    def details(self) -> dict[str, Any]:
        return {
            "questions": [
                {
                    "id": q.id,
                    "text": q.text.view(),
                    "options": [{"id": o.id, "text": o.text.view()} for o in q.options],
                }
                for q in self.questions
            ]
        }

    def missing(self, facts: StepFacts) -> Text | None:
        if facts.customer_done:
            return None
        return Text("the customer has not answered the questionnaire", "客户尚未完成问卷")


@dataclass(frozen=True, kw_only=True)
class SuitabilityStep(Step):
    """Checked when it starts: the product's risk must not exceed the level an earlier questionnaire gave."""

    kind: ClassVar[str] = "suitability"
    default_title: ClassVar[Text] = Text("Suitability check", "适当性匹配")
    keys: ClassVar[tuple[str, ...]] = ("questionnaire", "product")
    required: ClassVar[tuple[str, ...]] = ("questionnaire", "product")

    #: id of the questionnaire step whose level is compared
    questionnaire: str
    product: Product

    @classmethod
    def read(cls, source: StepSource) -> Self:
        questionnaire = source.earlier_step("questionnaire", QuestionnaireStep)
        product = read_product(source.reader, source.value("product"), source.what)
        top = max(level.rank for level in questionnaire.levels)
        if product.risk_rank > top:
            source.reader.fail(
                source.value("product"),
                f"product risk {product.risk_level} is above every level of "
                f"questionnaire {questionnaire.id!r}: no customer could buy it",
            )
        return cls(**source.common, questionnaire=questionnaire.id, product=product)

    def details(self) -> dict[str, Any]:
        return {
            "product": {
                "code": self.product.code,
                "name": self.product.name.view(),
                "risk_level": self.product.risk_level,
            }
        }

    def missing(self, facts: StepFacts) -> Text | None:
        return (
            None if facts.customer_done else Text("the product is not suitable", "产品不适合该客户")
        )


@dataclass(frozen=True, kw_only=True)
class DocumentStep(Step):
    """A document shown in full; done when the customer reached its end."""

    kind: ClassVar[str] = "document"
    default_title: ClassVar[Text] = Text("Read the document", "阅读文件")
    keys: ClassVar[tuple[str, ...]] = ("document",)
    required: ClassVar[tuple[str, ...]] = ("document",)

    #: the id of the document shown
    document: str

    @classmethod
    def read(cls, source: StepSource) -> Self:
        return cls(**source.common, document=source.document_ref())

    def shown_document(self, flow: Flow) -> Document:
        return flow.documents[self.document]

    def missing(self, facts: StepFacts) -> Text | None:
        if facts.customer_done:
            return None
        return Text("the customer has not read the document to its end", "客户尚未读完文件")


@dataclass(frozen=True, kw_only=True)
class SignatureStep(Step):
    """The customer signs the document of an earlier document step (its hash)."""

    kind: ClassVar[str] = "signature"
    default_title: ClassVar[Text] = Text("Signature", "签名确认")
    keys: ClassVar[tuple[str, ...]] = ("document",)
    required: ClassVar[tuple[str, ...]] = ("document",)

    #: the id of the DOCUMENT STEP signed
    document: str

    @classmethod
    def read(cls, source: StepSource) -> Self:
        return cls(**source.common, document=source.earlier_step("document", DocumentStep).id)

    def shown_document(self, flow: Flow) -> Document:
        signed = flow.step(self.document)
        assert isinstance(signed, DocumentStep)
        return signed.shown_document(flow)

    def missing(self, facts: StepFacts) -> Text | None:
        return None if facts.customer_done else Text("the customer has not signed", "客户尚未签名")


@dataclass(frozen=True, kw_only=True)
class OutcomeStep(Step):
    """The business itself, booked when the agent completes the step: an account, a loan, an order."""

    kind: ClassVar[str] = "outcome"
    default_title: ClassVar[Text] = Text("Completion", "业务办理")
    keys: ClassVar[tuple[str, ...]] = ("outcome",)
    required: ClassVar[tuple[str, ...]] = ("outcome",)

    #: {"type": "account"|"loan"|"order", ...params} (see business.outcome)
    outcome: dict[str, Any]
    #: an order's product: that of the earlier suitability step it names
    product: Product | None = None

    @classmethod
    def read(cls, source: StepSource) -> Self:
        outcome = read_outcome(source.reader, source.value("outcome"), source.business)
        product = None
        if outcome["type"] == "order":
            code = outcome["product_code"]
            products = [s.product for s in source.earlier if isinstance(s, SuitabilityStep)]
            product = next((p for p in products if p.code == code), None)
            if product is None:
                code_node = source.reader.mapping(source.value("outcome"), "outcome")[
                    "product_code"
                ][1]
                source.reader.fail(
                    code_node,
                    f"product {code!r} is not the product of an earlier "
                    "suitability step: a product is sold only after its "
                    "suitability check",
                )
        return cls(**source.common, outcome=outcome, product=product)

    async def book(
        self,
        core: CoreBanking,
        *,
        session_id: str,
        customer_name: str,
        account_class: str,
        customer_risk_level: str,
    ) -> dict[str, Any]:
        """Book the outcome with the core system; returns ``{"type": ..., "reference": ..., ...}``.

        ``account_class`` applies when the outcome fixes none; ``customer_risk_level``
        is recorded with an order.
        """
        kind = self.outcome["type"]
        if kind == "account":
            return {
                "type": kind,
                **await core.open_account(
                    session_id=session_id,
                    customer_name=customer_name,
                    account_class=str(self.outcome.get("class") or account_class),
                ),
            }
        if kind == "loan":
            return {
                "type": kind,
                **await core.sign_loan(
                    session_id=session_id,
                    customer_name=customer_name,
                    terms=dict(self.outcome.get("terms") or {}),
                ),
            }
        product = self.product
        return {
            "type": kind,
            **await core.place_order(
                session_id=session_id,
                customer_name=customer_name,
                product={
                    "code": product.code,
                    "name": product.name.en,
                    "risk_level": product.risk_level,
                }
                if product
                else {},
                amount=self.outcome.get("amount"),
                customer_risk_level=customer_risk_level,
            ),
        }


#: every step kind, by its name in flow files, in the order the format lists them
STEP_TYPES: dict[str, type[Step]] = {
    cls.kind: cls
    for cls in (
        ConsentStep,
        IdentityStep,
        DisclosureStep,
        QuestionnaireStep,
        SuitabilityStep,
        DocumentStep,
        SignatureStep,
        OutcomeStep,
    )
}
STEP_KINDS: tuple[str, ...] = tuple(STEP_TYPES)
