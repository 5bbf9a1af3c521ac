"""A document a flow shows in full (agreement, contract, product sheet), as the customer reads and signs it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from yaml.nodes import Node

from .exceptions import FlowError
from .reader import NodeReader
from .text import Text

MAX_DOCUMENTS = 20
MAX_DOCUMENT_BYTES = 1 << 20


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

    def view(self) -> dict[str, object]:
        """What a client needs to name the document and check what it shows: id, title, hash."""
        return {"id": self.id, "title": self.title.view(), "sha256": self.sha256}


def declared_documents(reader: NodeReader, node: Node) -> dict[str, tuple[Text, Node]]:
    """The flow file's ``documents``: id -> (title, node of its file name), files not read yet."""
    entries = reader.mapping(node, "documents")
    if len(entries) > MAX_DOCUMENTS:
        reader.fail(node, f"more than {MAX_DOCUMENTS} documents")
    out: dict[str, tuple[Text, Node]] = {}
    for doc_id, (key, value) in entries.items():
        reader.ident(key, "document id")
        spec = reader.mapping(value, f"document {doc_id!r}", ("title", "file"))
        for field in ("title", "file"):
            if field not in spec:
                reader.fail(value, f"document {doc_id!r} needs {field!r}")
        out[doc_id] = (
            reader.text(spec["title"][1], f"title of document {doc_id!r}"),
            spec["file"][1],
        )
    return out


def load_document(
    reader: NodeReader, doc_id: str, title: Text, file_node: Node, documents_dir: Path
) -> Document:
    """Read a declared document's file from inside ``documents_dir`` and fill its placeholders."""
    name = reader.string(file_node, f"file of document {doc_id!r}")
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or "\\" in name or ":" in name or ".." in rel.parts:
        reader.fail(
            file_node,
            f"document file {name!r} must be a relative path inside "
            f"{documents_dir} (no '..', no absolute path)",
        )
    base = documents_dir.resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        reader.fail(file_node, f"document file {name!r} leads outside {documents_dir}")
    if not path.is_file():
        reader.fail(file_node, f"document file {name!r} does not exist in {documents_dir}")
    size = path.stat().st_size
    if size > MAX_DOCUMENT_BYTES:
        reader.fail(
            file_node, f"document file {name!r} is {size} bytes, more than {MAX_DOCUMENT_BYTES}"
        )
    raw = path.read_bytes()[: MAX_DOCUMENT_BYTES + 1]
    if len(raw) > MAX_DOCUMENT_BYTES:
        reader.fail(file_node, f"document file {name!r} is more than {MAX_DOCUMENT_BYTES} bytes")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FlowError(
            path, raw[: exc.start].count(b"\n") + 1, f"document {doc_id!r} is not valid UTF-8"
        ) from exc
    if content.startswith("\ufeff"):
        content = content[1:]
    if not content.strip():
        reader.fail(file_node, f"document file {name!r} is empty")
    content = reader.fill(content, lambda offset: content.count("\n", 0, offset) + 1, path)
    return Document(
        id=doc_id,
        title=title,
        path=path,
        content=content,
        sha256=hashlib.sha256(content.encode("utf-8")).hexdigest(),
    )
