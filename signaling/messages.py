"""Every signaling message, as a typed model.

One WebSocket per participant carries JSON text frames; each frame is one
object with a ``type`` field. Client messages are validated here, at the edge:
:func:`parse_customer_message` and :func:`parse_agent_message` return a model or
raise :class:`~signaling.exceptions.InvalidMessage` with a reason the client can
show. Server messages are built from the models below and serialised with
:func:`dump`. ``docs/protocol.md`` documents the same set for client authors.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from itertools import accumulate
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError

from .exceptions import InvalidMessage

#: Largest text frame accepted from a client, in UTF-8 bytes (an SDP offer is ~5-10 KB).
MAX_MESSAGE_BYTES = 64 * 1024
#: Deepest nesting of arrays and objects accepted (the deepest message has 2 levels)
MAX_DEPTH = 8
#: Largest SDP accepted inside an ``offer``.
MAX_SDP_CHARS = 60_000


class AgentStatus(StrEnum):
    READY = "ready"
    AWAY = "away"
    BUSY = "busy"
    OFFERED = "offered"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DisplayName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f<>]+$")]
SessionId = Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Token = Annotated[str, Field(min_length=16, max_length=256)]
Sdp = Annotated[str, Field(min_length=10, max_length=MAX_SDP_CHARS)]
#: a business type id (``account_opening``), also an agent's skill; the broker accepts only the
#: businesses its configuration lists (``BrokerConfig.businesses``)
BusinessId = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")]


# --- client -> server, both roles -------------------------------------------------


class Ping(_Msg):
    type: Literal["ping"]


class Offer(_Msg):
    """The participant's SDP offer (ICE gathering complete: no trickle)."""

    type: Literal["offer"]
    sdp: Sdp


class Hangup(_Msg):
    type: Literal["hangup"]


class RequestKeyframe(_Msg):
    """Ask the other party's encoder for a keyframe (e.g. after a decode error)."""

    type: Literal["request_keyframe"]


# --- client -> server, customer ---------------------------------------------------


class Join(_Msg):
    type: Literal["join"]
    business: BusinessId
    display_name: DisplayName
    #: the customer accepted the "this call is recorded" notice (双录告知); required, and only
    #: JSON ``true`` counts (consents are strict booleans: ``"yes"`` or ``1`` are refused)
    recording_consent: StrictBool = False
    #: separate, optional consent to face verification (人脸识别授权); without it the agent
    #: verifies the customer manually
    face_consent: StrictBool = False
    #: the token of an appointment the bank booked (single use; its business and name apply)
    appointment: Token | None = None


class Rejoin(_Msg):
    type: Literal["rejoin"]
    session_id: SessionId
    rejoin_token: Token


class Cancel(_Msg):
    """Leave the queue before being connected."""

    type: Literal["cancel"]


# --- client -> server, agent ------------------------------------------------------


class Auth(_Msg):
    """First message of an agent connection that carries no session cookie."""

    type: Literal["auth"]
    token: Token


class SetStatus(_Msg):
    type: Literal["set_status"]
    status: Literal["ready", "away"]


class Accept(_Msg):
    type: Literal["accept"]
    session_id: SessionId


class Decline(_Msg):
    type: Literal["decline"]
    session_id: SessionId


#: what became of a call, as the agent records it in the wrap-up after hanging up
Disposition = Literal["completed", "customer_declined", "needs_follow_up", "technical_problem"]
DISPOSITIONS: tuple[str, ...] = get_args(Disposition)
#: longest wrap-up notes, in characters
MAX_WRAP_UP_NOTES = 1000


class WrapUp(_Msg):
    """Agent, after a call of theirs ended: what became of it, and notes (once per session)."""

    type: Literal["wrap_up"]
    session_id: SessionId
    disposition: Disposition
    #: free text; line breaks and tabs, but no other control characters
    notes: Annotated[
        str, Field(max_length=MAX_WRAP_UP_NOTES, pattern=r"^[^\x00-\x08\x0b-\x1f]*$")
    ] = ""


# --- identity --------------------------------------------------------------------


class FaceConsent(_Msg):
    """Customer: give or withdraw consent to face verification (any time in the session)."""

    type: Literal["face_consent"]
    accepted: StrictBool


class IdentityVerify(_Msg):
    """Agent: compare the customer's live face with the reference photo now."""

    type: Literal["identity_verify"]


class LivenessStart(_Msg):
    """Agent: issue a liveness challenge to the customer."""

    type: Literal["liveness_start"]


class CaptureSnapshot(_Msg):
    """Agent: keep the customer's current frame as evidence."""

    type: Literal["capture_snapshot"]


class CaptureReference(_Msg):
    """Agent: take the reference face from the ID card the customer holds up to the camera."""

    type: Literal["capture_reference"]


class ManualVerification(_Msg):
    """Agent: the outcome of verifying the customer by eye (no face consent, or a failed check)."""

    type: Literal["manual_verification"]
    verified: StrictBool
    reason: Annotated[str, Field(min_length=3, max_length=500, pattern=r"^[^\x00-\x08\x0b-\x1f]+$")]


# --- business flows --------------------------------------------------------------------

StepId = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")]
Sha256 = Annotated[str, Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]
#: a handwritten signature as a base64 PNG (a 600x200 canvas is ~10-30 kB)
SignatureImage = Annotated[
    str, Field(min_length=16, max_length=60_000, pattern=r"^[A-Za-z0-9+/=]+$")
]


class StepNext(_Msg):
    """Agent: the current step is done, go to the next (refused unless its conditions are met)."""

    type: Literal["step_next"]
    step_id: StepId


class MarkConfirmed(_Msg):
    """Agent: the customer confirmed the disclosure aloud (heard on the call)."""

    type: Literal["mark_confirmed"]
    step_id: StepId


class PushDocument(_Msg):
    """Agent: show a document of this flow on the customer's screen now."""

    type: Literal["push_document"]
    document_id: StepId


class ConsentAccept(_Msg):
    type: Literal["consent_accept"]
    step_id: StepId
    #: the separate face-verification consent, when the step asks for it
    face: StrictBool = False


class ConsentDecline(_Msg):
    type: Literal["consent_decline"]
    step_id: StepId


class DisclosureConfirm(_Msg):
    type: Literal["disclosure_confirm"]
    step_id: StepId


class QuestionnaireSubmit(_Msg):
    type: Literal["questionnaire_submit"]
    step_id: StepId
    #: question id -> option id
    answers: dict[StepId, StepId] = Field(max_length=100)


class DocumentRead(_Msg):
    """Customer: reached the end of the document (its SHA-256 is the one they were shown)."""

    type: Literal["document_read"]
    step_id: StepId
    sha256: Sha256


class SignatureSubmit(_Msg):
    type: Literal["signature_submit"]
    step_id: StepId
    document_sha256: Sha256
    image_png: SignatureImage


CustomerMessage = Annotated[
    Join
    | Rejoin
    | Cancel
    | Offer
    | Hangup
    | Ping
    | RequestKeyframe
    | FaceConsent
    | ConsentAccept
    | ConsentDecline
    | DisclosureConfirm
    | QuestionnaireSubmit
    | DocumentRead
    | SignatureSubmit,
    Field(discriminator="type"),
]
AgentMessage = Annotated[
    Auth
    | SetStatus
    | Accept
    | Decline
    | Offer
    | Hangup
    | Ping
    | RequestKeyframe
    | IdentityVerify
    | LivenessStart
    | CaptureSnapshot
    | CaptureReference
    | ManualVerification
    | StepNext
    | MarkConfirmed
    | PushDocument
    | WrapUp,
    Field(discriminator="type"),
]

_customer_adapter: TypeAdapter[Any] = TypeAdapter(CustomerMessage)
_agent_adapter: TypeAdapter[Any] = TypeAdapter(AgentMessage)


def byte_size(raw: str | bytes) -> int:
    """The size of a frame on the wire: UTF-8 bytes, not characters (``"李"`` is 3)."""
    if isinstance(raw, str):
        return len(raw.encode("utf-8", "surrogatepass"))
    return len(raw)


#: what is left of JSON strings once escapes are gone, and anything but a bracket
_JSON_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether ``text`` nests arrays and objects deeper than ``limit``, found before it is parsed
    (Python's JSON parser recurses once per level: 64 KB of ``[`` end in ``RecursionError``).

    Linear in the text: escapes are removed, then strings, then all but the brackets."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the usual case: too few brackets to nest that deep
    bare = text.replace("\\\\", "").replace('\\"', "")
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", bare))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def _parse(adapter: TypeAdapter[Any], raw: str | bytes, role: str) -> Any:
    size = byte_size(raw)
    if size > MAX_MESSAGE_BYTES:
        raise InvalidMessage(
            f"message of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
            code="too_large",
            fatal=True,
        )
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(
            f"message is not valid JSON: {exc.__class__.__name__}", code="bad_json"
        ) from None
    if _too_deep(text):
        raise InvalidMessage(
            f"message nests arrays or objects deeper than {MAX_DEPTH} levels", code="too_deep"
        )
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage(
            f"message is not valid JSON: {exc.__class__.__name__}", code="bad_json"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise InvalidMessage('message must be a JSON object with a string "type"')
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        if first.get("type") == "union_tag_invalid":
            raise InvalidMessage(
                f"unknown message type {data['type'][:40]!r} for a {role}", code="unknown_type"
            ) from None
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "message"
        raise InvalidMessage(
            f"invalid {data['type'][:40]!r} message: {where}: {first['msg']}"
        ) from None


def parse_customer_message(raw: str | bytes) -> Any:
    """Validate one frame from a customer; raise :class:`InvalidMessage` if it is not usable."""
    return _parse(_customer_adapter, raw, "customer")


def parse_agent_message(raw: str | bytes) -> Any:
    """Validate one frame from an agent; raise :class:`InvalidMessage` if it is not usable."""
    return _parse(_agent_adapter, raw, "agent")


# --- server -> client -------------------------------------------------------------


class IceServer(_Msg):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class Joined(_Msg):
    type: Literal["joined"] = "joined"
    session_id: str
    rejoin_token: str
    business: str
    rejoin_window_s: int


class Rejoined(_Msg):
    type: Literal["rejoined"] = "rejoined"
    session_id: str
    state: str


class QueueUpdate(_Msg):
    type: Literal["queue_update"] = "queue_update"
    position: int
    estimated_wait_s: int
    agents_available: int
    #: ``waiting``, or ``transferring``: an offer of this customer failed (the agent declined,
    #: missed it or dropped) and another agent is being tried
    status: Literal["waiting", "transferring"] = "waiting"
    #: the customer has waited the long-wait limit: they may ask for a call-back instead
    long_wait: bool = False


class Authenticated(_Msg):
    type: Literal["authenticated"] = "authenticated"
    username: str
    display_name: str
    skills: list[str]
    #: seconds of wrap-up after a call before the workbench sets the agent ready again
    wrap_up_s: float = 30.0


class StatusChanged(_Msg):
    type: Literal["status"] = "status"
    status: AgentStatus


class CustomerOffer(_Msg):
    """An agent is offered a waiting customer; accept or decline before it expires."""

    type: Literal["customer_offer"] = "customer_offer"
    session_id: str
    business: str
    display_name: str
    waited_s: int
    expires_in_s: int


class OfferWithdrawn(_Msg):
    type: Literal["offer_withdrawn"] = "offer_withdrawn"
    session_id: str
    reason: str


class Peer(_Msg):
    display_name: str
    role: Literal["customer", "agent"]
    business: str | None = None


class CallStarted(_Msg):
    """Both parties are connected; the client now sends its ``offer``."""

    type: Literal["call_started"] = "call_started"
    session_id: str
    peer: Peer
    ice_servers: list[IceServer]


class Answer(_Msg):
    type: Literal["answer"] = "answer"
    sdp: str


class PeerReconnecting(_Msg):
    type: Literal["peer_reconnecting"] = "peer_reconnecting"
    window_s: int


class PeerReconnected(_Msg):
    type: Literal["peer_reconnected"] = "peer_reconnected"


class MediaLost(_Msg):
    """To the other party: ``role``'s audio and video stopped arriving (the call goes on).

    ``reason`` is ``failed`` (its peer connection failed: ICE consent expired or
    DTLS broke) or ``stalled`` (connected, but no media for ``media_timeout_s``).
    Unless ``media_restored`` follows within ``window_s``, the call ends
    ``media_failed``.
    """

    type: Literal["media_lost"] = "media_lost"
    role: Literal["customer", "agent"]
    reason: Literal["failed", "stalled"]
    window_s: int


class MediaRestart(_Msg):
    """To the party whose media the server lost: make a new peer connection and send a new ``offer``."""

    type: Literal["media_restart"] = "media_restart"
    reason: Literal["failed", "stalled"]


class MediaRestored(_Msg):
    """To both parties: ``role``'s media arrives again after ``media_lost``."""

    type: Literal["media_restored"] = "media_restored"
    role: Literal["customer", "agent"]


class Requeued(_Msg):
    """The agent dropped: the customer is back at the head of the queue."""

    type: Literal["requeued"] = "requeued"
    reason: str


class CallEnded(_Msg):
    type: Literal["call_ended"] = "call_ended"
    session_id: str
    reason: str


class RecordingAlert(_Msg):
    """To the agent: the recording of a call of theirs cannot be stored right now (disk full).

    ``failing``: what is recorded is held in memory and storing is retried (nothing is lost);
    ``paused``: so much is held that new media is no longer recorded (end the call; what was
    recorded is kept); ``recovered``: storage works again and everything held is stored.
    ``message`` is the server's description, for the log.
    """

    type: Literal["recording_alert"] = "recording_alert"
    session_id: str
    state: Literal["failing", "paused", "recovered"]
    message: str


class WrapUpSaved(_Msg):
    """To the agent: the wrap-up of ``session_id`` is on the session's timeline."""

    type: Literal["wrap_up_saved"] = "wrap_up_saved"
    session_id: str
    disposition: str


class QueueStats(_Msg):
    """Sent to agents: how many customers wait per business, and how long the longest has."""

    type: Literal["queue_stats"] = "queue_stats"
    waiting: dict[str, int]
    #: business -> seconds the longest-waiting customer of it has waited (businesses with a queue)
    longest_wait_s: dict[str, int] = Field(default_factory=dict)
    #: the businesses whose longest wait reached the long-wait limit (``long_wait_s``)
    long_wait: list[str] = Field(default_factory=list)


class Pong(_Msg):
    type: Literal["pong"] = "pong"


class Error(_Msg):
    type: Literal["error"] = "error"
    code: str
    message: str
    fatal: bool = False


class Instruction(_Msg):
    step: str
    en: str
    zh: str


class LivenessChallenge(_Msg):
    """To the customer (and the agent): do these actions in this order."""

    type: Literal["liveness_challenge"] = "liveness_challenge"
    steps: list[str]
    instructions: list[Instruction]
    step_time_limit_s: float


class LivenessProgress(_Msg):
    type: Literal["liveness_progress"] = "liveness_progress"
    current: str | None
    completed: list[str]


class LivenessOutcome(_Msg):
    type: Literal["liveness_result"] = "liveness_result"
    passed: bool
    reason: str | None
    message: str
    message_zh: str


class VerificationOutcome(_Msg):
    """To the customer: whether their face was verified, or what to fix (no scores)."""

    type: Literal["verification_result"] = "verification_result"
    verified: bool
    #: match, no_match, or inconclusive (a frame to fix, or the agent checks the ID)
    verdict: Literal["match", "no_match", "inconclusive"] = "inconclusive"
    reason: str
    message: str
    message_zh: str


class IdentityPanel(_Msg):
    """To the agent: everything the identity panel shows (sent whenever it changes)."""

    type: Literal["identity"] = "identity"
    session_id: str
    state: dict[str, Any]


class FlowState(_Msg):
    """To both parties: the business flow's checklist and the current step (sent on every change)."""

    type: Literal["flow_state"] = "flow_state"
    session_id: str
    state: dict[str, Any]


class DocumentShown(_Msg):
    """To the customer (and echoed to the agent): a document to read on screen."""

    type: Literal["document"] = "document"
    document: dict[str, Any]
    #: pushed by the agent outside the script (True), or the current document step (False)
    pushed: bool


class Receipt(_Msg):
    """To the customer: the sealed signature receipt to keep (a JSON file)."""

    type: Literal["receipt"] = "receipt"
    receipt_id: str
    filename: str
    content: str


ServerMessage = (
    Joined
    | Rejoined
    | QueueUpdate
    | Authenticated
    | StatusChanged
    | CustomerOffer
    | OfferWithdrawn
    | CallStarted
    | Answer
    | PeerReconnecting
    | PeerReconnected
    | MediaLost
    | MediaRestart
    | MediaRestored
    | Requeued
    | CallEnded
    | RecordingAlert
    | WrapUpSaved
    | QueueStats
    | LivenessChallenge
    | LivenessProgress
    | LivenessOutcome
    | VerificationOutcome
    | IdentityPanel
    | FlowState
    | DocumentShown
    | Receipt
    | Pong
    | Error
)


class Relayed(BaseModel):
    """A server message that another node serialised, passed on as it is."""

    text: str


def dump(message: BaseModel) -> str:
    """Serialise a server message to the JSON text sent on the wire."""
    if isinstance(message, Relayed):
        return message.text
    return message.model_dump_json(exclude_none=True)
