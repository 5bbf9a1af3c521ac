"""Reading flow files (``flows/<business>.yaml``): every rule checked before the server starts.

A flow file lists the steps of one business in the order they run; the
documents it shows are Markdown files in ``flows/documents``. An admin edits
them without code, so the loader checks everything it can: structure,
references, limits and the regulatory ordering rules (identity and every
disclosure before a signature, a signature before the outcome, recording
consent first). A flow that breaks one is refused with a
:class:`~business.exceptions.FlowError` naming the file and the line. The
format is described for admins in ``docs/flows.md``; the server enforces the
same order again per session.

Each step kind reads its own keys (:mod:`business.steps`); this module reads
the file around them and checks the rules that span steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from .catalogue import BUSINESS_TYPES, Business
from .document import Document, declared_documents, load_document
from .exceptions import FlowError
from .flow import Flow
from .outcome import ACCOUNT_CLASSES, outcome_variables, read_outcome
from .reader import Entries, NodeReader, line_of
from .steps import (
    STEP_KINDS,
    STEP_TYPES,
    ConsentStep,
    DisclosureStep,
    IdentityStep,
    OutcomeStep,
    SignatureStep,
    Step,
    StepSource,
)

MAX_STEPS = 50
MAX_FILE_BYTES = 1 << 20

TOP_KEYS = ("business", "title", "version", "documents", "steps")
#: keys every step accepts, whatever its kind
COMMON_KEYS = ("id", "kind", "title", "requires", "text")

DEFAULT_FLOWS_DIR = Path(__file__).resolve().parent.parent / "flows"


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
    files = sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )
    for path in files:
        flow, business_line = _load(path, directory / "documents", account_class)
        other = flows.get(flow.business)
        if other is not None:
            raise FlowError(
                path,
                business_line,
                f"business {flow.business!r} is already defined by {other.path.name}: "
                "one flow file per business",
            )
        flows[flow.business] = flow
    return flows


def _load(path: Path, documents_dir: Path | None, account_class: str) -> tuple[Flow, int]:
    """The flow and the line of its ``business`` key."""
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
    return _FlowFile(path, docs, account_class).parse(data)


class _FlowFile:
    """One flow file being read."""

    def __init__(self, path: Path, documents_dir: Path, account_class: str) -> None:
        self.path = path
        self.documents_dir = documents_dir
        self.account_class = account_class
        self.reader = NodeReader(path)
        #: (step id, required id) -> line of the requires entry
        self.requires_lines: dict[tuple[str, str], int] = {}

    def parse(self, data: bytes) -> tuple[Flow, int]:
        reader = self.reader
        root = reader.compose(data)
        if root is None:
            reader.fail(1, "the file is empty: a flow needs 'business' and 'steps'")
        if not isinstance(root, MappingNode):
            reader.fail(root, "a flow file must be a mapping with 'business' and 'steps'")
        top = reader.mapping(root, "the flow file", TOP_KEYS)
        for key in ("business", "steps"):
            if key not in top:
                reader.fail(root, f"missing {key!r}")
        business_node = top["business"][1]
        name = reader.string(business_node, "business")
        if name not in BUSINESS_TYPES:
            reader.fail(
                business_node, f"unknown business {name!r} (one of {', '.join(BUSINESS_TYPES)})"
            )
        business = Business.of(name)
        title = reader.text(top["title"][1], "title") if "title" in top else business.flow_title
        version = (
            reader.integer(top["version"][1], "version", 1, 1_000_000) if "version" in top else 1
        )

        declared = declared_documents(reader, top["documents"][1]) if "documents" in top else {}
        steps_node = top["steps"][1]
        step_nodes = reader.sequence(steps_node, "steps", MAX_STEPS)
        reader.variables = self.outcome_variables(step_nodes, business)
        documents = {
            doc_id: load_document(reader, doc_id, doc_title, file_node, self.documents_dir)
            for doc_id, (doc_title, file_node) in declared.items()
        }

        steps: list[Step] = []
        for node in step_nodes:
            steps.append(self.step(node, steps, business, documents))
        if not steps:
            reader.fail(steps_node, "a flow needs at least one step")
        self.check_requires(steps)
        self.check_order(steps)
        flow = Flow(
            business=business.value,
            title=title,
            version=version,
            steps=tuple(steps),
            documents=documents,
            path=self.path,
        )
        return flow, line_of(business_node)

    def outcome_variables(self, step_nodes: list[Node], business: Business) -> dict[str, str]:
        """The ``{{placeholders}}`` documents and texts may use, from the (first) outcome step."""
        for node in step_nodes:
            if not isinstance(node, MappingNode):
                continue
            entries = {k.value: v for k, v in node.value if isinstance(k, ScalarNode)}
            kind = entries.get("kind")
            if (
                isinstance(kind, ScalarNode)
                and kind.value == OutcomeStep.kind
                and "outcome" in entries
            ):
                outcome = read_outcome(self.reader, entries["outcome"], business)
                return outcome_variables(outcome, self.account_class)
        return {}

    # -- one step ------------------------------------------------------------------------

    def step(
        self,
        node: Node,
        earlier: Sequence[Step],
        business: Business,
        documents: dict[str, Document],
    ) -> Step:
        """One entry of ``steps``: its kind and the keys every step has, then the kind's own keys."""
        entries = self.reader.mapping(node, "a step")
        cls = self.step_kind(node, entries)
        sid = self.step_id(node, entries, cls, earlier)
        return cls.read(
            StepSource(
                reader=self.reader,
                node=node,
                entries=entries,
                common=self.common(node, entries, sid, cls),
                earlier=earlier,
                documents=documents,
                business=business,
            )
        )

    def step_kind(self, node: Node, entries: Entries) -> type[Step]:
        """The class of the step's ``kind``; every key of the step must be one it accepts."""
        if "kind" not in entries:
            self.reader.fail(node, f"a step needs 'kind' (one of {', '.join(STEP_KINDS)})")
        kind_key, kind_node = entries["kind"]
        kind = self.reader.string(kind_node, "kind")
        if kind not in STEP_TYPES:
            self.reader.fail(
                kind_key, f"unknown step kind {kind!r} (one of {', '.join(STEP_KINDS)})"
            )
        cls = STEP_TYPES[kind]
        allowed = COMMON_KEYS + cls.keys
        for name, (key, _) in entries.items():
            if name not in allowed:
                self.reader.fail(
                    key, f"unknown key {name!r} in a {kind} step (allowed: {', '.join(allowed)})"
                )
        return cls

    def step_id(
        self, node: Node, entries: Entries, cls: type[Step], earlier: Sequence[Step]
    ) -> str:
        """The step's ``id``, unique in the flow; then the keys its kind needs must be there."""
        if "id" not in entries:
            self.reader.fail(node, f"a {cls.kind} step needs 'id'")
        id_node = entries["id"][1]
        sid = self.reader.ident(id_node, "step id")
        for other in earlier:
            if other.id == sid:
                self.reader.fail(id_node, f"duplicate step id {sid!r} (first at line {other.line})")
        for name in cls.required:
            if name not in entries:
                self.reader.fail(node, f"{cls.kind} step {sid!r} needs {name!r}")
        return sid

    def common(self, node: Node, entries: Entries, sid: str, cls: type[Step]) -> dict[str, Any]:
        """The keys every step may have: ``title`` (else the kind's), ``text``, ``requires``."""
        what = f"step {sid!r}"
        common: dict[str, Any] = {
            "id": sid,
            "line": line_of(node),
            "title": self.reader.text(entries["title"][1], f"title of {what}")
            if "title" in entries
            else cls.default_title,
        }
        if "text" in entries:
            common["text"] = self.reader.text(entries["text"][1], f"text of {what}", fill=True)
        if "requires" in entries:
            common["requires"] = self.requires(sid, entries["requires"][1])
        return common

    def requires(self, sid: str, node: Node) -> tuple[str, ...]:
        items = (
            [node]
            if isinstance(node, ScalarNode)
            else self.reader.sequence(node, "requires", MAX_STEPS)
        )
        out: list[str] = []
        for item in items:
            rid = self.reader.ident(item, "requires entry")
            if rid in out:
                self.reader.fail(item, f"{rid!r} is listed twice in requires")
            out.append(rid)
            self.requires_lines[(sid, rid)] = line_of(item)
        return tuple(out)

    # -- rules across steps --------------------------------------------------------------

    def check_requires(self, steps: list[Step]) -> None:
        """Every ``requires`` names a step of the flow, forms no cycle, and names an earlier step."""
        index = {s.id: i for i, s in enumerate(steps)}
        for s in steps:
            for rid in s.requires:
                if rid not in index:
                    self.reader.fail(
                        self.requires_lines[(s.id, rid)],
                        f"step {s.id!r} requires {rid!r}, which is not a step of this flow",
                    )
        self.check_cycles(
            steps, index
        )  # first: each cycle also contains a requirement on a later step
        for s in steps:
            for rid in s.requires:
                if index[rid] > index[s.id]:
                    self.reader.fail(
                        self.requires_lines[(s.id, rid)],
                        f"step {s.id!r} requires {rid!r}, which comes later (line "
                        f"{steps[index[rid]].line}): steps run in the declared order",
                    )

    def check_cycles(self, steps: list[Step], index: dict[str, int]) -> None:
        """No step requires itself through others (depth-first, the cycle named from its first step)."""
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
                    cycle = on_path[on_path.index(rid) :]
                    first = min(range(len(cycle)), key=lambda k: index[cycle[k]])
                    cycle = cycle[first:] + cycle[:first]
                    self.reader.fail(
                        steps[index[cycle[0]]].line,
                        "requires cycle: " + " -> ".join([*cycle, cycle[0]]),
                    )
                if rid not in done:
                    stack.append((rid, 0))
                    on_path.append(rid)

    def check_order(self, steps: list[Step]) -> None:
        """The regulatory order: recording consent first, identity and disclosures before the signature..."""
        first = steps[0]
        if not (isinstance(first, ConsentStep) and first.asks("recording")):
            self.reader.fail(
                first.line,
                "the first step must be a consent step asking for 'recording' "
                "(双录: nothing happens before the customer agrees to the recording)",
            )
        outcomes = [s for s in steps if isinstance(s, OutcomeStep)]
        if len(outcomes) > 1:
            self.reader.fail(
                outcomes[1].line, f"a flow has one outcome step (first: {outcomes[0].id!r})"
            )
        for i, s in enumerate(steps):
            before, after = steps[:i], steps[i + 1 :]
            if isinstance(s, IdentityStep):
                self.check_identity(s, before)
            elif isinstance(s, SignatureStep):
                self.check_signature(s, before, after)
            elif isinstance(s, OutcomeStep) and not any(
                isinstance(b, SignatureStep) for b in before
            ):
                self.reader.fail(s.line, f"outcome step {s.id!r} must come after a signature step")

    def check_identity(self, step: IdentityStep, before: list[Step]) -> None:
        if not step.allow_manual and not any(
            isinstance(b, ConsentStep) and b.asks("face") for b in before
        ):
            self.reader.fail(
                step.line,
                f"identity step {step.id!r} allows no manual verification, but no "
                "earlier consent step asks for 'face': it could never pass",
            )

    def check_signature(self, step: SignatureStep, before: list[Step], after: list[Step]) -> None:
        if not any(isinstance(b, IdentityStep) for b in before):
            self.reader.fail(
                step.line, f"signature step {step.id!r} must come after an identity step"
            )
        late = next((a for a in after if isinstance(a, DisclosureStep)), None)
        if late is not None:
            self.reader.fail(
                step.line,
                f"signature step {step.id!r} must come after every disclosure "
                f"step, but {late.id!r} (line {late.line}) comes after it",
            )
