"""YAML documents with line/column marks, and errors that point into them.

Every problem found in a user's file (syntax, schema, semantics) becomes a `Problem` (problems.py)
with the file, line, column and dotted path of the offending node; `SiteError` carries all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError

from .inputs import site_text
from .problems import PathPart, Problem, SiteError, dotted


@dataclass
class Document:
    """A parsed YAML file: plain Python data plus the marks of every node."""

    file: str
    root: Any  # ruamel CommentedMap/CommentedSeq tree (keeps marks)
    lines: list[str] = field(default_factory=list)
    raw: bytes = field(default=b"", repr=False)  # the file's bytes, as read (load_document)

    @property
    def data(self) -> Any:
        return to_plain(self.root)

    def mark(self, path: Sequence[PathPart], at_key: bool = False) -> tuple[int, int]:
        """1-based (line, col) of the node at path; the nearest existing ancestor if it is missing.

        For a mapping key that exists, the mark is that of the value (where the mistake usually
        is); for a missing key, the mark of the parent mapping's first key.
        """
        node = self.root
        line, col = 0, 0
        if isinstance(node, CommentedMap | CommentedSeq):
            line, col = _first_mark(node)
        for part in path:
            if isinstance(node, CommentedMap) and isinstance(part, str) and part in node:
                try:
                    vline, vcol = node.lc.value(part)
                except (KeyError, TypeError):
                    vline, vcol = node.lc.key(part)
                if at_key or (isinstance(node[part], CommentedMap | CommentedSeq) and len(node[part])):
                    # a block collection's own mark is its key; point at the key
                    vline, vcol = node.lc.key(part)
                line, col = vline, vcol
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line, col = node.lc.item(part)
                node = node[part]
            else:
                break
        return line + 1, col + 1

    def problem(self, path: Sequence[PathPart], message: str, severity: str = "error", at_key: bool = False) -> Problem:
        line, col = self.mark(path, at_key)
        src = self.lines[line - 1] if 0 < line <= len(self.lines) else None
        return Problem(self.file, line, col, dotted(path), message, severity, src)


def _first_mark(node: CommentedMap | CommentedSeq) -> tuple[int, int]:
    if isinstance(node, CommentedMap) and len(node):
        return node.lc.key(next(iter(node)))
    if isinstance(node, CommentedSeq) and len(node):
        return node.lc.item(0)
    return node.lc.line or 0, node.lc.col or 0


def to_plain(node: Any) -> Any:
    if isinstance(node, CommentedMap):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [to_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def load_document(path: str | Path) -> Document:
    """Parse a YAML file, rejecting duplicate keys; raise SiteError with marks on any failure."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
        text = site_text(raw)
    except FileNotFoundError:
        raise SiteError([Problem(name, 0, 0, "(file)", "no such file")]) from None
    except OSError as e:
        raise SiteError([Problem(name, 0, 0, "(file)", f"cannot read: {e.strerror}")]) from None
    except UnicodeDecodeError as e:
        raise SiteError([Problem(name, 0, 0, "(file)", f"not UTF-8 text: {e.reason}")]) from None
    doc = parse_document(text, name)
    doc.raw = raw
    return doc


def parse_document(text: str, name: str) -> Document:
    lines = text.splitlines()
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        root = yaml.load(text)
    except DuplicateKeyError as e:
        mark = e.problem_mark
        src = lines[mark.line] if mark and mark.line < len(lines) else None
        key = _duplicate_key_name(e)
        raise SiteError([Problem(name, mark.line + 1, mark.column + 1, key, "duplicate key", "error", src)]) from None
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        src = lines[line - 1] if 0 < line <= len(lines) else None
        msg = (e.problem or e.context or "invalid YAML").strip()
        raise SiteError([Problem(name, line, col, "(yaml)", msg, "error", src)]) from None
    if root is None:
        root = CommentedMap()
    return Document(name, root, lines)


def _duplicate_key_name(e: DuplicateKeyError) -> str:
    problem = str(e.problem or "")
    # ruamel: 'found duplicate key "name" with value ...'
    if '"' in problem:
        return problem.split('"')[1]
    return "(yaml)"


M = TypeVar("M", bound=BaseModel)


def validate_model(doc: Document, model: type[M]) -> M:
    """Validate doc.data against a pydantic model; every error becomes a located Problem."""
    try:
        return model.model_validate(doc.data)
    except ValidationError as e:
        raise SiteError(problems_from_validation(doc, e, model)) from None


INLINE_SECRET = "a secret is never written into the site file; give {env: NAME} or {file: PATH}"


def problems_from_validation(
    doc: Document, error: ValidationError, model: type[BaseModel] | None = None
) -> list[Problem]:
    problems = []
    for err in error.errors(include_url=False):
        loc = [p for p in err["loc"] if not _is_union_tag(p)]
        msg = _friendly_message(err)
        problem = doc.problem(loc, msg, at_key=err["type"] == "extra_forbidden")
        if model is not None and _inside_secret(model, loc):
            # Whatever sits there may be the secret itself (written inline, or in the wrong key):
            # neither the message nor the echoed source line may show it.
            inline = err["type"] in ("model_type", "dict_type", "model_attributes_type")
            problem = replace(problem, message=INLINE_SECRET if inline else _without_input(msg, err), source_line=None)
        problems.append(problem)
    return problems


def _inside_secret(model: type[BaseModel], loc: Sequence[PathPart]) -> bool:
    """Whether loc runs through a field whose type is marked `holds_secret` (SecretRef)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: the item type was taken with the list's field
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return False
        current = _model_in(fields[part].annotation)
        if current is None:
            return False
        if getattr(current, "holds_secret", False):
            return True
    return False


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _without_input(msg: str, err: dict) -> str:
    value = err.get("input")
    if isinstance(value, str) and value:
        msg = msg.replace(repr(value), "<redacted>").replace(value, "<redacted>")
    return msg


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the union member's name into loc ('function-after[...]', 'str', 'int'...)
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "bool", "float"})


def _friendly_message(err: dict) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "string_pattern_mismatch":
        return f"{err['input']!r} is not a valid {str(err['loc'][-1]).replace('_', ' ')}"
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg
