"""Business flow files (issue #5): the declarative script of each business, loaded and checked.

A flow file (``flows/<business>.yaml``) lists the steps of one business in the
order they run; the documents it shows are Markdown files in
``flows/documents``. An admin edits them without code, so the loader checks
everything it can before the server starts: structure, references, limits and
the regulatory ordering rules (identity and every disclosure before a
signature, a signature before the outcome, recording consent first). A flow
that breaks one is refused with a :class:`FlowError` naming the file and the
line. The format is described for admins in ``docs/flows.md``; the runtime
(:mod:`server.flow_engine`) enforces the same order again per session.

Loan and order figures are written once, in the outcome step; documents and
step texts quote them as ``{{amount}}``, ``{{annual_rate}}``... so the
contract the customer signs cannot disagree with what is booked.

Import-light on purpose (standard library and PyYAML only): the CLI and tests
load flows without the server.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

STEP_KINDS = ("consent", "identity", "disclosure", "questionnaire", "suitability", "document",
              "signature", "outcome")
BUSINESSES = ("account_opening", "loan_signing", "wealth_product")
#: the outcome type each business books
OUTCOME_TYPES = {"account_opening": "account", "loan_signing": "loan", "wealth_product": "order"}
CONSENTS = ("recording", "face")
CONFIRMERS = ("agent", "customer")
#: remote opening without on-site verification gives Type II/III accounts (银发〔2015〕392号)
ACCOUNT_CLASSES = ("II", "III")

MAX_STEPS = 50
MAX_TEXT_CHARS = 20_000
MAX_FILE_BYTES = 1 << 20
MAX_DOCUMENT_BYTES = 1 << 20
MAX_DOCUMENTS = 20
MAX_QUESTIONS = 50
MAX_OPTIONS = 20
MAX_LEVELS = 10

ID_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
LEVEL_CODE_RE = re.compile(r"[A-Z][A-Z0-9]{0,7}")
PRODUCT_CODE_RE = re.compile(r"[A-Z0-9][A-Z0-9_-]{0,31}")
RISK_LEVEL_RE = re.compile(r"R([1-9])")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z0-9_]*)\s*\}\}")

DEFAULT_FLOWS_DIR = Path(__file__).resolve().parent.parent / "flows"


class FlowError(Exception):
    """A flow file that cannot be used: ``str()`` is ``"{path}:{line}: {message}"``.

    ``line`` is 1-based, or None for what concerns the whole file (too large,
    unreadable); then ``str()`` is ``"{path}: {message}"``.
    """

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        super().__init__(path, line, message)
        self.path = Path(path)
        self.line = line
        self.message = message

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Text:
    """A user-facing text in both languages (a plain string in YAML is used for both)."""

    en: str
    zh: str


@dataclass(frozen=True)
class Option:
    id: str
    text: Text
    score: int


@dataclass(frozen=True)
class Question:
    id: str
    text: Text
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Level:
    """A customer risk level (C1..C5): reached by a total score of at least ``min_score``."""

    code: str
    min_score: int
    rank: int
    text: Text


@dataclass(frozen=True)
class Product:
    """A product's risk level (R1..R5); a customer may buy it when their level's rank >= ``risk_rank``."""

    code: str
    name: Text
    risk_level: str
    risk_rank: int


@dataclass(frozen=True)
class Document:
    """A document shown in full to the customer; ``sha256`` is over ``content.encode("utf-8")``.

    ``content`` is the file with its ``{{placeholders}}`` filled in: what the
    customer reads and signs.
    """

    id: str
    title: Text
    path: Path
    content: str
    sha256: str


@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    title: Text
    #: line of the step in its flow file
    line: int
    #: extra prerequisites (step ids); the declared order is always enforced too
    requires: tuple[str, ...] = ()
    #: what is read aloud and shown (any kind; required for a disclosure)
    text: Text | None = None
    #: consent: what the customer consents to, a subset of ("recording", "face")
    consents: tuple[str, ...] = ()
    #: identity: a liveness challenge must pass as well
    liveness: bool = False
    #: identity: a manual verification by the agent (with a reason) may replace it
    allow_manual: bool = True
    #: disclosure: who must confirm (the agent marks the spoken confirmation, the customer taps)
    confirm_by: tuple[str, ...] = ("agent", "customer")
    #: questionnaire
    questions: tuple[Question, ...] = ()
    #: questionnaire: score -> level (the highest level whose min_score <= total), ascending
    levels: tuple[Level, ...] = ()
    #: suitability: id of the questionnaire step whose level is compared
    questionnaire: str | None = None
    #: suitability: the product; outcome of an order: the product ordered
    product: Product | None = None
    #: document: a Document id; signature: the id of the DOCUMENT STEP signed;
    #: disclosure (optional): a Document id holding the full text of what is disclosed
    document: str | None = None
    #: outcome: {"type": "account"|"loan"|"order", ...params}
    outcome: dict[str, Any] | None = None


@dataclass(frozen=True)
class Flow:
    business: str
    title: Text
    version: int
    steps: tuple[Step, ...]
    documents: dict[str, Document]
    path: Path

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def index(self, step_id: str) -> int:
        for i, step in enumerate(self.steps):
            if step.id == step_id:
                return i
        raise KeyError(step_id)


def level_for(step: Step, score: int) -> Level:
    """The customer's level for a questionnaire total: the highest level whose ``min_score`` <= score.

    A score below every level gets the lowest level (the cautious answer);
    the loader makes sure that cannot happen with a shipped questionnaire.
    """
    if not step.levels:
        raise ValueError(f"step {step.id!r} has no levels")
    reached = [level for level in step.levels if level.min_score <= score]
    if not reached:
        return min(step.levels, key=lambda level: (level.rank, level.min_score))
    return max(reached, key=lambda level: (level.rank, level.min_score))


def load_flow(path: Path, documents_dir: Path | None = None, *, account_class: str = "II") -> Flow:
    """Load and check one flow file; documents come from ``documents_dir`` (default: beside it).

    ``account_class`` fills ``{{account_class}}`` when the account outcome does not fix a class
    (pass the server's configured class).
    """
    return _load(Path(path), documents_dir, account_class)[0]


def load_flows(directory: Path, *, account_class: str = "II") -> dict[str, Flow]:
    """Every ``*.yaml``/``*.yml`` in ``directory``, one per business; documents from ``directory/documents``."""
    directory = Path(directory)
    flows: dict[str, Flow] = {}
    files = sorted(p for p in directory.iterdir()
                   if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file())
    for path in files:
        flow, business_line = _load(path, directory / "documents", account_class)
        other = flows.get(flow.business)
        if other is not None:
            raise FlowError(path, business_line,
                            f"business {flow.business!r} is already defined by {other.path.name}: "
                            "one flow file per business")
        flows[flow.business] = flow
    return flows


# -- loading -------------------------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"
TOP_KEYS = ("business", "title", "version", "documents", "steps")
COMMON_KEYS = ("id", "kind", "title", "requires", "text")
KIND_KEYS = {
    "consent": ("consents",),
    "identity": ("liveness", "allow_manual"),
    "disclosure": ("confirm_by", "document"),
    "questionnaire": ("questions", "levels"),
    "suitability": ("questionnaire", "product"),
    "document": ("document",),
    "signature": ("document",),
    "outcome": ("outcome",),
}
REQUIRED_KEYS = {
    "consent": ("consents",),
    "disclosure": ("text",),
    "questionnaire": ("questions", "levels"),
    "suitability": ("questionnaire", "product"),
    "document": ("document",),
    "signature": ("document",),
    "outcome": ("outcome",),
}
BUSINESS_TITLES = {
    "account_opening": Text("Personal account opening", "个人账户开立"),
    "loan_signing": Text("Personal loan signing", "个人贷款面签"),
    "wealth_product": Text("Wealth product purchase", "理财产品购买"),
}
STEP_TITLES = {
    "consent": Text("Consent to recording", "录音录像授权"),
    "identity": Text("Identity verification", "身份核验"),
    "disclosure": Text("Disclosure", "信息披露"),
    "questionnaire": Text("Questionnaire", "问卷"),
    "suitability": Text("Suitability check", "适当性匹配"),
    "document": Text("Read the document", "阅读文件"),
    "signature": Text("Signature", "签名确认"),
    "outcome": Text("Completion", "业务办理"),
}

_Entries = dict[str, tuple[Node, Node]]


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _load(path: Path, documents_dir: Path | None, account_class: str) -> tuple[Flow, int]:
    if account_class not in ACCOUNT_CLASSES:
        raise ValueError(f"account_class must be one of {ACCOUNT_CLASSES}, not {account_class!r}")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise FlowError(path, None, f"the file is {size} bytes, more than {MAX_FILE_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise FlowError(path, None, f"cannot read the flow file: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise FlowError(path, None, f"the file is {len(data)} bytes, more than {MAX_FILE_BYTES}")
    docs = Path(documents_dir) if documents_dir is not None else path.parent / "documents"
    return _Parser(path, docs, account_class).parse(data)


class _Parser:
    def __init__(self, path: Path, documents_dir: Path, account_class: str) -> None:
        self.path = path
        self.documents_dir = documents_dir
        self.account_class = account_class
        self.constructor = yaml.constructor.SafeConstructor()
        #: placeholder values, from the outcome step
        self.variables: dict[str, str] = {}
        #: (step id, required id) -> line of the requires entry
        self.requires_lines: dict[tuple[str, str], int] = {}

    def fail(self, where: Node | int | None, message: str) -> NoReturn:
        line = _line(where) if isinstance(where, Node) else where
        raise FlowError(self.path, line, message)

    # -- YAML ----------------------------------------------------------------------------

    def compose(self, data: bytes) -> Node | None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fail(data[: exc.start].count(b"\n") + 1, "the file is not valid UTF-8")
        if text.startswith("\ufeff"):
            text = text[1:]
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
            self.fail(None if mark is None else mark.line + 1, f"YAML syntax error: {problem}")
        except yaml.reader.ReaderError as exc:
            self.fail(text.count("\n", 0, exc.position) + 1,
                      f"YAML syntax error: character {exc.character!r} is not allowed")
        except yaml.YAMLError as exc:
            self.fail(None, f"YAML error: {exc}")

    def mapping(self, node: Node, what: str, allowed: Iterable[str] | None = None) -> _Entries:
        if not isinstance(node, MappingNode):
            self.fail(node, f"{what} must be a mapping (key: value)")
        allowed = tuple(allowed) if allowed is not None else None
        entries: _Entries = {}
        for key, value in node.value:
            if not (isinstance(key, ScalarNode) and key.tag == _TAG + "str"):
                self.fail(key, f"keys of {what} must be plain words")
            name = str(key.value)
            if name in entries:
                self.fail(key, f"{name!r} is given twice in {what} (first at line {_line(entries[name][0])})")
            if allowed is not None and name not in allowed:
                self.fail(key, f"unknown key {name!r} in {what} (allowed: {', '.join(allowed)})")
            entries[name] = (key, value)
        return entries

    def sequence(self, node: Node, what: str, max_items: int) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.fail(node, f"{what} must be a list")
        items = list(node.value)
        if len(items) > max_items:
            self.fail(items[max_items], f"{what}: more than {max_items} entries")
        return items

    def scalar(self, node: Node, what: str, tags: tuple[str, ...], expected: str) -> Any:
        if not str(node.tag).startswith(_TAG):
            self.fail(node, f"{what}: YAML tags such as {node.tag} are not allowed")
        if not isinstance(node, ScalarNode) or node.tag not in tuple(_TAG + t for t in tags):
            self.fail(node, f"{what} must be {expected}")
        try:
            return self.constructor.construct_object(node)
        except yaml.YAMLError as exc:
            self.fail(node, f"{what}: {exc}")

    def string(self, node: Node, what: str, pattern: re.Pattern[str] | None = None,
               form: str = "") -> str:
        value = str(self.scalar(node, what, ("str",), "a string (quote it)"))
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(node, f"{what} {value!r} is not valid: {form}")
        return value

    def ident(self, node: Node, what: str) -> str:
        return self.string(node, what, ID_RE,
                           "a lower-case letter, then up to 39 lower-case letters, digits or _")

    def integer(self, node: Node, what: str, lo: int, hi: int) -> int:
        value = self.scalar(node, what, ("int",), "a whole number")
        if not lo <= value <= hi:
            self.fail(node, f"{what} must be between {lo} and {hi}, not {value}")
        return int(value)

    def number(self, node: Node, what: str, lo: float, hi: float) -> int | float:
        value = self.scalar(node, what, ("int", "float"), "a number")
        if not (lo <= value <= hi):  # also refuses .nan
            self.fail(node, f"{what} must be between {lo:g} and {hi:g}, not {value}")
        return value  # type: ignore[no-any-return]

    def boolean(self, node: Node, what: str) -> bool:
        return bool(self.scalar(node, what, ("bool",), "true or false"))

    def one_text(self, node: Node, what: str, fill: bool) -> str:
        # a text is whatever was written: "No" or "2025" stay text
        if not str(node.tag).startswith(_TAG):
            self.fail(node, f"{what}: YAML tags such as {node.tag} are not allowed")
        if not isinstance(node, ScalarNode) or node.tag not in tuple(
                _TAG + t for t in ("str", "int", "float", "bool")):
            self.fail(node, f"{what} must be a text")
        value = str(node.value).strip("\n") if node.style in ("|", ">") else str(node.value)
        if not value.strip():
            self.fail(node, f"{what} must not be empty")
        if fill:
            raw = value
            if node.style == "|":  # a literal block starts on the line after its "|"
                value = self.fill(raw, lambda offset: _line(node) + 1 + raw.count("\n", 0, offset))
            else:
                value = self.fill(raw, lambda offset: _line(node))
        if len(value) > MAX_TEXT_CHARS:
            self.fail(node, f"{what} is {len(value)} characters long, more than {MAX_TEXT_CHARS}")
        return value

    def text(self, node: Node, what: str, *, fill: bool = False) -> Text:
        """A plain text (both languages) or ``{en: ..., zh: ...}``."""
        if isinstance(node, MappingNode):
            entries = self.mapping(node, what, ("en", "zh"))
            for lang in ("en", "zh"):
                if lang not in entries:
                    self.fail(node, f"{what} needs both 'en' and 'zh' (or one plain text for both)")
            return Text(self.one_text(entries["en"][1], f"{what} (en)", fill),
                        self.one_text(entries["zh"][1], f"{what} (zh)", fill))
        value = self.one_text(node, what, fill)
        return Text(value, value)

    def fill(self, text: str, line_at: Any, path: Path | None = None) -> str:
        """Replace ``{{name}}`` by the flow's values; an unknown name is an error at its line."""

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.variables:
                known = ", ".join(sorted(self.variables)) or "none: this flow's outcome defines no values"
                raise FlowError(path or self.path, line_at(match.start()),
                                f"unknown placeholder {match.group(0)} (known: {known})")
            return self.variables[name]

        return PLACEHOLDER_RE.sub(sub, text)

    # -- the file ------------------------------------------------------------------------

    def parse(self, data: bytes) -> tuple[Flow, int]:
        root = self.compose(data)
        if root is None:
            self.fail(1, "the file is empty: a flow needs 'business' and 'steps'")
        if not isinstance(root, MappingNode):
            self.fail(root, "a flow file must be a mapping with 'business' and 'steps'")
        top = self.mapping(root, "the flow file", TOP_KEYS)
        for key in ("business", "steps"):
            if key not in top:
                self.fail(root, f"missing {key!r}")
        business_node = top["business"][1]
        business = self.string(business_node, "business")
        if business not in BUSINESSES:
            self.fail(business_node, f"unknown business {business!r} (one of {', '.join(BUSINESSES)})")
        title = self.text(top["title"][1], "title") if "title" in top else BUSINESS_TITLES[business]
        version = self.integer(top["version"][1], "version", 1, 1_000_000) if "version" in top else 1

        declared = self.declared_documents(top["documents"][1]) if "documents" in top else {}
        steps_node = top["steps"][1]
        step_nodes = self.sequence(steps_node, "steps", MAX_STEPS)
        self.variables = self.outcome_variables(step_nodes, business)
        documents = {doc_id: self.document(doc_id, *spec) for doc_id, spec in declared.items()}

        steps: list[Step] = []
        for node in step_nodes:
            steps.append(self.step(node, steps, business, documents))
        if not steps:
            self.fail(steps_node, "a flow needs at least one step")
        self.check_requires(steps)
        self.check_order(steps)
        flow = Flow(business=business, title=title, version=version, steps=tuple(steps),
                    documents=documents, path=self.path)
        return flow, _line(business_node)

    def declared_documents(self, node: Node) -> dict[str, tuple[Text, Node]]:
        entries = self.mapping(node, "documents")
        if len(entries) > MAX_DOCUMENTS:
            self.fail(node, f"more than {MAX_DOCUMENTS} documents")
        out: dict[str, tuple[Text, Node]] = {}
        for doc_id, (key, value) in entries.items():
            self.ident(key, "document id")
            spec = self.mapping(value, f"document {doc_id!r}", ("title", "file"))
            for field in ("title", "file"):
                if field not in spec:
                    self.fail(value, f"document {doc_id!r} needs {field!r}")
            out[doc_id] = (self.text(spec["title"][1], f"title of document {doc_id!r}"), spec["file"][1])
        return out

    def document(self, doc_id: str, title: Text, file_node: Node) -> Document:
        name = self.string(file_node, f"file of document {doc_id!r}")
        rel = PurePosixPath(name)
        if not name or rel.is_absolute() or "\\" in name or ":" in name or ".." in rel.parts:
            self.fail(file_node, f"document file {name!r} must be a relative path inside "
                                 f"{self.documents_dir} (no '..', no absolute path)")
        base = self.documents_dir.resolve()
        path = (base / rel).resolve()
        if not path.is_relative_to(base):
            self.fail(file_node, f"document file {name!r} leads outside {self.documents_dir}")
        if not path.is_file():
            self.fail(file_node, f"document file {name!r} does not exist in {self.documents_dir}")
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            self.fail(file_node, f"document file {name!r} is {size} bytes, more than {MAX_DOCUMENT_BYTES}")
        raw = path.read_bytes()[: MAX_DOCUMENT_BYTES + 1]
        if len(raw) > MAX_DOCUMENT_BYTES:
            self.fail(file_node, f"document file {name!r} is more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FlowError(path, raw[: exc.start].count(b"\n") + 1,
                            f"document {doc_id!r} is not valid UTF-8") from exc
        if content.startswith("\ufeff"):
            content = content[1:]
        if not content.strip():
            self.fail(file_node, f"document file {name!r} is empty")
        content = self.fill(content, lambda offset: content.count("\n", 0, offset) + 1, path)
        return Document(id=doc_id, title=title, path=path, content=content,
                        sha256=hashlib.sha256(content.encode("utf-8")).hexdigest())

    # -- steps ---------------------------------------------------------------------------

    def step(self, node: Node, earlier: list[Step], business: str, documents: dict[str, Document]) -> Step:
        entries = self.mapping(node, "a step")
        if "kind" not in entries:
            self.fail(node, f"a step needs 'kind' (one of {', '.join(STEP_KINDS)})")
        kind_key, kind_node = entries["kind"]
        kind = self.string(kind_node, "kind")
        if kind not in STEP_KINDS:
            self.fail(kind_key, f"unknown step kind {kind!r} (one of {', '.join(STEP_KINDS)})")
        allowed = COMMON_KEYS + KIND_KEYS[kind]
        for name, (key, _) in entries.items():
            if name not in allowed:
                self.fail(key, f"unknown key {name!r} in a {kind} step (allowed: {', '.join(allowed)})")
        if "id" not in entries:
            self.fail(node, f"a {kind} step needs 'id'")
        id_node = entries["id"][1]
        sid = self.ident(id_node, "step id")
        for other in earlier:
            if other.id == sid:
                self.fail(id_node, f"duplicate step id {sid!r} (first at line {other.line})")
        for name in REQUIRED_KEYS.get(kind, ()):
            if name not in entries:
                self.fail(node, f"{kind} step {sid!r} needs {name!r}")

        def value(name: str) -> Node:
            return entries[name][1]

        what = f"step {sid!r}"
        kw: dict[str, Any] = {"id": sid, "kind": kind, "line": _line(node),
                              "title": self.text(value("title"), f"title of {what}")
                              if "title" in entries else STEP_TITLES[kind]}
        if "text" in entries:
            kw["text"] = self.text(value("text"), f"text of {what}", fill=True)
        if "requires" in entries:
            kw["requires"] = self.requires(sid, value("requires"))

        if kind == "consent":
            kw["consents"] = self.choices(value("consents"), f"consents of {what}", CONSENTS)
        elif kind == "identity":
            if "liveness" in entries:
                kw["liveness"] = self.boolean(value("liveness"), f"liveness of {what}")
            if "allow_manual" in entries:
                kw["allow_manual"] = self.boolean(value("allow_manual"), f"allow_manual of {what}")
        elif kind == "disclosure":
            if "confirm_by" in entries:
                kw["confirm_by"] = self.choices(value("confirm_by"), f"confirm_by of {what}", CONFIRMERS)
            if "document" in entries:
                kw["document"] = self.document_ref(value("document"), what, documents)
        elif kind == "questionnaire":
            kw["questions"] = self.questions(value("questions"), what)
            kw["levels"] = self.levels(value("levels"), what, kw["questions"])
        elif kind == "suitability":
            kw["questionnaire"], questionnaire = self.earlier_step(
                value("questionnaire"), what, earlier, "questionnaire")
            kw["product"] = self.product(value("product"), what)
            top = max(level.rank for level in questionnaire.levels)
            if kw["product"].risk_rank > top:
                self.fail(value("product"), f"product risk {kw['product'].risk_level} is above every level "
                                            f"of questionnaire {questionnaire.id!r}: no customer could buy it")
        elif kind == "document":
            kw["document"] = self.document_ref(value("document"), what, documents)
        elif kind == "signature":
            kw["document"], _ = self.earlier_step(value("document"), what, earlier, "document")
        elif kind == "outcome":
            kw["outcome"] = self.outcome(value("outcome"), business)
            if kw["outcome"]["type"] == "order":
                code_node = self.mapping(value("outcome"), "outcome")["product_code"][1]
                products = [s.product for s in earlier if s.kind == "suitability" and s.product]
                product = next((p for p in products if p.code == kw["outcome"]["product_code"]), None)
                if product is None:
                    self.fail(code_node, f"product {kw['outcome']['product_code']!r} is not the product of "
                                         "an earlier suitability step: a product is sold only after "
                                         "its suitability check")
                kw["product"] = product
        return Step(**kw)

    def requires(self, sid: str, node: Node) -> tuple[str, ...]:
        items = [node] if isinstance(node, ScalarNode) else self.sequence(node, "requires", MAX_STEPS)
        out: list[str] = []
        for item in items:
            rid = self.ident(item, "requires entry")
            if rid in out:
                self.fail(item, f"{rid!r} is listed twice in requires")
            out.append(rid)
            self.requires_lines[(sid, rid)] = _line(item)
        return tuple(out)

    def choices(self, node: Node, what: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        items = self.sequence(node, what, len(allowed))
        if not items:
            self.fail(node, f"{what} must not be empty (one or more of {', '.join(allowed)})")
        for item in items:
            value = self.string(item, what)
            if value not in allowed:
                self.fail(item, f"{what}: unknown {value!r} (one or more of {', '.join(allowed)})")
            if value in out:
                self.fail(item, f"{what}: {value!r} is listed twice")
            out.append(value)
        return tuple(out)

    def document_ref(self, node: Node, what: str, documents: dict[str, Document]) -> str:
        doc_id = self.ident(node, f"document of {what}")
        if doc_id not in documents:
            known = ", ".join(documents) or "none declared"
            self.fail(node, f"{what}: no document {doc_id!r} under 'documents' (declared: {known})")
        return doc_id

    def earlier_step(self, node: Node, what: str, earlier: list[Step], kind: str) -> tuple[str, Step]:
        ref = self.ident(node, f"{kind} of {what}")
        target = next((s for s in earlier if s.id == ref), None)
        if target is None:
            self.fail(node, f"{what} names {ref!r}, which is not an earlier step: it must name a "
                            f"{kind} step declared before it")
        if target.kind != kind:
            self.fail(node, f"{what} names {ref!r}, a {target.kind} step: it must name a {kind} step")
        return ref, target

    def questions(self, node: Node, what: str) -> tuple[Question, ...]:
        items = self.sequence(node, f"questions of {what}", MAX_QUESTIONS)
        if not items:
            self.fail(node, f"questions of {what} must not be empty")
        out: list[Question] = []
        for item in items:
            q = self.mapping(item, "a question", ("id", "text", "options"))
            for name in ("id", "text", "options"):
                if name not in q:
                    self.fail(item, f"a question needs {name!r}")
            qid = self.ident(q["id"][1], "question id")
            if any(other.id == qid for other in out):
                self.fail(q["id"][1], f"duplicate question id {qid!r} in {what}")
            options: list[Option] = []
            option_nodes = self.sequence(q["options"][1], f"options of question {qid!r}", MAX_OPTIONS)
            if len(option_nodes) < 2:
                self.fail(q["options"][1], f"question {qid!r} needs at least two options")
            for onode in option_nodes:
                o = self.mapping(onode, "an option", ("id", "text", "score"))
                for name in ("id", "text", "score"):
                    if name not in o:
                        self.fail(onode, f"an option needs {name!r}")
                oid = self.ident(o["id"][1], "option id")
                if any(other.id == oid for other in options):
                    self.fail(o["id"][1], f"duplicate option id {oid!r} in question {qid!r}")
                options.append(Option(oid, self.text(o["text"][1], f"option {oid!r}"),
                                      self.integer(o["score"][1], f"score of option {oid!r}", 0, 1000)))
            out.append(Question(qid, self.text(q["text"][1], f"question {qid!r}"), tuple(options)))
        return tuple(out)

    def levels(self, node: Node, what: str, questions: tuple[Question, ...]) -> tuple[Level, ...]:
        items = self.sequence(node, f"levels of {what}", MAX_LEVELS)
        if not items:
            self.fail(node, f"levels of {what} must not be empty")
        lowest = sum(min(o.score for o in q.options) for q in questions)
        highest = sum(max(o.score for o in q.options) for q in questions)
        out: list[Level] = []
        for i, item in enumerate(items):
            spec = self.mapping(item, "a level", ("code", "min_score", "rank", "text"))
            for name in ("code", "min_score"):
                if name not in spec:
                    self.fail(item, f"a level needs {name!r}")
            code = self.string(spec["code"][1], "level code", LEVEL_CODE_RE,
                               "an upper-case letter, then up to 7 upper-case letters or digits (C1)")
            min_score = self.integer(spec["min_score"][1], f"min_score of level {code}", 0, 1_000_000)
            rank = self.integer(spec["rank"][1], f"rank of level {code}", 1, 9) if "rank" in spec else i + 1
            text = self.text(spec["text"][1], f"text of level {code}") if "text" in spec else Text(code, code)
            if out:
                prev = out[-1]
                if code in {level.code for level in out}:
                    self.fail(spec["code"][1], f"duplicate level {code}")
                if min_score <= prev.min_score:
                    self.fail(spec["min_score"][1], f"levels go from the lowest to the highest: min_score of "
                                                    f"{code} must be above {prev.code}'s {prev.min_score}")
                if rank <= prev.rank:
                    self.fail(item, f"levels go from the lowest to the highest: rank of {code} must be "
                                    f"above {prev.code}'s {prev.rank}")
            elif min_score > lowest:
                self.fail(spec["min_score"][1], f"the lowest level {code} starts at {min_score}, but a "
                                                f"customer can score {lowest}: every score needs a level")
            if min_score > highest:
                self.fail(spec["min_score"][1], f"level {code} can never be reached: the highest possible "
                                                f"score is {highest}")
            out.append(Level(code, min_score, rank, text))
        return tuple(out)

    def product(self, node: Node, what: str) -> Product:
        spec = self.mapping(node, f"product of {what}", ("code", "name", "risk_level"))
        for name in ("code", "name", "risk_level"):
            if name not in spec:
                self.fail(node, f"the product needs {name!r}")
        code = self.string(spec["code"][1], "product code", PRODUCT_CODE_RE,
                           "upper-case letters, digits, - or _, at most 32")
        risk = self.string(spec["risk_level"][1], "risk_level", RISK_LEVEL_RE, "R1 to R9 (R1 lowest)")
        return Product(code, self.text(spec["name"][1], f"name of product {code}"), risk, int(risk[1:]))

    # -- outcome -------------------------------------------------------------------------

    def outcome(self, node: Node, business: str) -> dict[str, Any]:
        spec = self.mapping(node, "outcome")
        if "type" not in spec:
            self.fail(node, "outcome needs 'type' (account, loan or order)")
        type_node = spec["type"][1]
        kind = self.string(type_node, "outcome type")
        if kind not in OUTCOME_TYPES.values():
            self.fail(type_node, f"unknown outcome type {kind!r} (account, loan or order)")
        if kind != OUTCOME_TYPES[business]:
            self.fail(type_node, f"a {business} flow books an outcome of type "
                                 f"{OUTCOME_TYPES[business]!r}, not {kind!r}")
        allowed = {"account": ("type", "class"), "loan": ("type", "terms"),
                   "order": ("type", "product_code", "amount")}[kind]
        spec = self.mapping(node, f"{kind} outcome", allowed)
        out: dict[str, Any] = {"type": kind}
        if kind == "account":
            if "class" in spec:
                cls_node = spec["class"][1]
                cls = self.string(cls_node, "account class")
                if cls not in ACCOUNT_CLASSES:
                    self.fail(cls_node, f"account class {cls!r}: a remote opening without on-site "
                                        "verification gives a Type II or III account (银发〔2015〕392号)")
                out["class"] = cls
        elif kind == "loan":
            if "terms" not in spec:
                self.fail(node, "a loan outcome needs 'terms' (amount, currency, term_months, annual_rate)")
            terms_node = spec["terms"][1]
            terms = self.mapping(terms_node, "loan terms", ("amount", "currency", "term_months", "annual_rate"))
            for name in ("amount", "currency", "term_months", "annual_rate"):
                if name not in terms:
                    self.fail(terms_node, f"loan terms need {name!r}")
            out["terms"] = {
                "amount": self.number(terms["amount"][1], "loan amount", 1, 1e9),
                "currency": self.string(terms["currency"][1], "currency", CURRENCY_RE,
                                        "three upper-case letters (CNY)"),
                "term_months": self.integer(terms["term_months"][1], "term_months", 1, 360),
                # percent per year: 3.85 means 3.85 % (0.0385 would be a slip)
                "annual_rate": self.number(terms["annual_rate"][1], "annual_rate (percent per year)",
                                           0.1, 36),
            }
        else:
            for name in ("product_code", "amount"):
                if name not in spec:
                    self.fail(node, f"an order outcome needs {name!r}")
            out["product_code"] = self.string(spec["product_code"][1], "product_code", PRODUCT_CODE_RE,
                                              "upper-case letters, digits, - or _, at most 32")
            out["amount"] = self.number(spec["amount"][1], "order amount", 0.01, 1e10)
        return out

    def outcome_variables(self, step_nodes: list[Node], business: str) -> dict[str, str]:
        """The ``{{placeholders}}`` documents and texts may use, from the (first) outcome step."""
        spec: dict[str, Any] | None = None
        for node in step_nodes:
            if not isinstance(node, MappingNode):
                continue
            entries = {k.value: v for k, v in node.value if isinstance(k, ScalarNode)}
            kind = entries.get("kind")
            if isinstance(kind, ScalarNode) and kind.value == "outcome" and "outcome" in entries:
                spec = self.outcome(entries["outcome"], business)
                break
        if spec is None:
            return {}
        if spec["type"] == "account":
            return {"account_class": spec.get("class", self.account_class)}
        if spec["type"] == "order":
            return {"product_code": spec["product_code"], "amount": _money(spec["amount"])}
        terms = spec["terms"]
        amount, months = Decimal(str(terms["amount"])), terms["term_months"]
        rate = Decimal(str(terms["annual_rate"]))
        monthly = _instalment(amount, rate, months)
        return {
            "amount": _money(amount), "currency": terms["currency"], "term_months": str(months),
            "annual_rate": _plain(rate), "monthly_payment": _money(monthly),
            "total_repayment": _money(monthly * months), "total_interest": _money(monthly * months - amount),
        }

    # -- rules across steps --------------------------------------------------------------

    def check_requires(self, steps: list[Step]) -> None:
        index = {s.id: i for i, s in enumerate(steps)}
        for s in steps:
            for rid in s.requires:
                if rid not in index:
                    self.fail(self.requires_lines[(s.id, rid)], f"step {s.id!r} requires {rid!r}, "
                                                                "which is not a step of this flow")
        # cycles first (each one also contains a requirement on a later step)
        done: set[str] = set()
        for start in steps:
            if start.id in done:
                continue
            stack: list[tuple[str, int]] = [(start.id, 0)]
            on_path = [start.id]
            while stack:
                sid, i = stack[-1]
                reqs = steps[index[sid]].requires
                if i >= len(reqs):
                    stack.pop()
                    on_path.pop()
                    done.add(sid)
                    continue
                stack[-1] = (sid, i + 1)
                rid = reqs[i]
                if rid in on_path:
                    cycle = on_path[on_path.index(rid):]
                    first = min(range(len(cycle)), key=lambda k: index[cycle[k]])
                    cycle = cycle[first:] + cycle[:first]
                    self.fail(steps[index[cycle[0]]].line,
                              "requires cycle: " + " -> ".join([*cycle, cycle[0]]))
                if rid not in done:
                    stack.append((rid, 0))
                    on_path.append(rid)
        for s in steps:
            for rid in s.requires:
                if index[rid] > index[s.id]:
                    self.fail(self.requires_lines[(s.id, rid)],
                              f"step {s.id!r} requires {rid!r}, which comes later (line "
                              f"{steps[index[rid]].line}): steps run in the declared order")

    def check_order(self, steps: list[Step]) -> None:
        first = steps[0]
        if first.kind != "consent" or "recording" not in first.consents:
            self.fail(first.line, "the first step must be a consent step asking for 'recording' "
                                  "(双录: nothing happens before the customer agrees to the recording)")
        outcomes = [s for s in steps if s.kind == "outcome"]
        if len(outcomes) > 1:
            self.fail(outcomes[1].line, f"a flow has one outcome step (first: {outcomes[0].id!r})")
        for i, s in enumerate(steps):
            before = steps[:i]
            if s.kind == "identity" and not s.allow_manual and not any(
                    b.kind == "consent" and "face" in b.consents for b in before):
                self.fail(s.line, f"identity step {s.id!r} allows no manual verification, but no earlier "
                                  "consent step asks for 'face': it could never pass")
            if s.kind == "signature":
                if not any(b.kind == "identity" for b in before):
                    self.fail(s.line, f"signature step {s.id!r} must come after an identity step")
                late = next((a for a in steps[i + 1:] if a.kind == "disclosure"), None)
                if late is not None:
                    self.fail(s.line, f"signature step {s.id!r} must come after every disclosure step, "
                                      f"but {late.id!r} (line {late.line}) comes after it")
            if s.kind == "outcome" and not any(b.kind == "signature" for b in before):
                self.fail(s.line, f"outcome step {s.id!r} must come after a signature step")


def _money(value: Decimal | int | float) -> str:
    return f"{Decimal(str(value)).quantize(Decimal('0.01'), ROUND_HALF_UP):,.2f}"


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _instalment(amount: Decimal, annual_rate_percent: Decimal, months: int) -> Decimal:
    """Equal monthly instalment (等额本息), rounded to the cent."""
    r = annual_rate_percent / Decimal(1200)
    payment = amount / months if r == 0 else amount * r / (1 - (1 + r) ** -months)
    return payment.quantize(Decimal("0.01"), ROUND_HALF_UP)
