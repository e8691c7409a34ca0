"""Read `cortex.yaml`, validate every API, and turn all problems into one `SpecError`.

Each API (a RealtimeAPI or a TrafficSplitter) is validated on its own (after dispatching on `kind`), so
one bad API does not hide another's problems; then what involves several (names, endpoints, a splitter's
targets) is checked across the file. Pydantic's errors are rewritten into messages that say what is
allowed. An API written for an older Cortex (see `legacy`) is validated against that era's schema and
converted to a native one.
"""

from __future__ import annotations

import difflib
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from cortex_flows.spec.errors import Problem, SpecError, describe_value
from cortex_flows.spec.legacy import LEGACY_MODELS, Era, convert, legacy_era
from cortex_flows.spec.models import (
    API_KINDS,
    ISSUES_ERROR,
    ApiSpec,
    ProjectSpec,
    RealtimeAPI,
    TrafficSplitter,
    is_api_name,
    validation_context,
)

SPEC_FILE_NAME = "cortex.yaml"

_EXPECTED_TYPES = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOOL_HINT = " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_BOUND_SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
# Bounds on what YAML may build, far beyond any real spec: PyYAML recurses once per nesting level, and
# aliases can make a small file expand into a huge (or self-containing) value that hashing would walk.
MAX_DEPTH = 100
MAX_VALUES = 100_000
_SAFE_INT_BITS = 3 * sys.get_int_max_str_digits() or sys.maxsize  # 2**(3n) < 10**n: fewer digits than allowed
_TOO_LONG = f"more than {sys.get_int_max_str_digits()} digits"
_MERGE = "tag:yaml.org,2002:merge"
_SCALAR_KINDS = {"int": "an integer", "float": "a number", "timestamp": "a date", "bool": "a boolean"}


def load_spec(path: str | Path) -> ProjectSpec:
    """Load a project's spec; `path` is the project directory (holding cortex.yaml) or the file itself."""
    file, text = read_spec_file(path)
    return parse_spec(text, file, file.parent)


def read_spec_file(path: str | Path) -> tuple[Path, str]:
    """The spec file `path` names (a project directory or the file itself) and its text."""
    path = Path(path)
    file = path / SPEC_FILE_NAME if path.is_dir() else path
    try:
        return file, file.read_text(encoding="utf-8")
    except FileNotFoundError:
        message = f"file not found; expected a project directory holding {SPEC_FILE_NAME}, or the spec file"
        raise SpecError(file, [Problem("", message)]) from None
    except UnicodeDecodeError as exc:
        raise SpecError(file, [Problem("", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    except OSError as exc:
        raise SpecError(file, [Problem("", f"cannot read the file: {exc.strerror}")]) from None


def parse_spec(text: str, file: Path, project_dir: Path) -> ProjectSpec:
    """Validate spec text; `file` names it in errors, `project_dir` is where referenced files must be."""
    read = read_apis(text, file, project_dir)
    return ProjectSpec(
        file=file.resolve(),
        project_dir=project_dir.resolve(),
        apis=[item.api for item in read],
        notices=[notice for item in read for notice in item.notices],
    )


@dataclass(frozen=True)
class ReadApi:
    """One validated API, with the native mapping it was validated from and what loading it noted.

    `native` is the item as written for a native API, the converted mapping for a Cortex-era one.
    """

    api: ApiSpec
    native: dict[str, Any]
    notices: list[Problem]


def read_apis(text: str, file: Path, project_dir: Path) -> list[ReadApi]:
    """Validate spec text as `parse_spec` does (raising the same `SpecError`), keeping each API's source."""
    items = _api_items(_load_yaml(text, file), file)
    prefixes = _prefixes(items)
    if problems := _expansion_problems(items, prefixes):
        raise SpecError(file, problems)  # validating or hashing such values could take forever
    context = validation_context(project_dir)
    read: list[tuple[str, ReadApi]] = []
    problems = _duplicate_names(items)
    for item, prefix in zip(items, prefixes, strict=True):
        api, item_problems = _validate_api(item, prefix, context)
        problems += item_problems
        if api is not None:
            read.append((prefix, api))
    problems += _duplicate_endpoints([(prefix, item.api) for prefix, item in read])
    problems += _splitters_of_splitters(items, [(prefix, item.api) for prefix, item in read])
    if problems:
        raise SpecError(file, problems)
    return [item for _, item in read]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects what PyYAML would accept silently or fail on with a bare Python error.

    Duplicate keys (PyYAML keeps the last), nesting deeper than `MAX_DEPTH` (PyYAML recurses per level),
    scalars Python cannot build (`2024-13-45`, a 5000-digit integer), integers too long to write back as
    text, halves of UTF-16 surrogate pairs, and `!!binary`/`!!set` values, which are no JSON a handler's
    config or a spec hash could hold.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.merged = 0  # key-value pairs that merges ("<<") copied: chained merges grow quadratically

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            data = super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:  # e.g. datetime.date(2024, 13, 45), int("9" * 5000)
            kind = node.tag.rsplit(":", 1)[-1]
            reason = _TOO_LONG if kind == "int" else str(exc)
            problem = f"cannot read {_excerpt(node.value)} as {_SCALAR_KINDS.get(kind, kind)}: {reason}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None
        if isinstance(data, int) and data.bit_length() > _SAFE_INT_BITS and not _printable_int(data):
            problem = f"cannot read {_excerpt(node.value)} as an integer: {_TOO_LONG}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)
        if isinstance(data, str) and not data.isascii() and not _encodable(data):
            data = self.constructed_objects[node] = _join_surrogates(data, node.start_mark)
        return data

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        merges = any(key_node.tag == _MERGE for key_node, _ in node.value)
        super().flatten_mapping(node)
        if merges:
            self.merged += len(node.value)
            if self.merged > MAX_VALUES:
                problem = f"merges ('<<') expand the file to more than {MAX_VALUES} values"
                raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)

    def construct_unsupported(self, node: yaml.Node) -> Any:
        problem = f"{node.tag.replace('tag:yaml.org,2002:', '!!')} values are not supported in {SPEC_FILE_NAME}"
        raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue  # "<<" merges may be overridden on purpose
            key = self.construct_object(key_node, deep=deep)
            try:
                mark = first_seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if mark is not key_node.start_mark:
                problem = f"duplicate key {key!r} (first defined on line {mark.line + 1})"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


for _tag in ("binary", "set"):
    _UniqueKeyLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _UniqueKeyLoader.construct_unsupported)


def _printable_int(value: int) -> bool:
    """Whether Python can write `value` in decimal (it refuses beyond `sys.get_int_max_str_digits()`)."""
    try:
        str(value)
    except ValueError:
        return False
    return True


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join_surrogates(text: str, mark: yaml.Mark) -> str:
    """JSON-style escapes of a character beyond U+FFFF ("\\ud83d\\ude00") as that character; PyYAML keeps
    the two halves, which no file, hash or handler can encode. A half without its pair is an error."""
    try:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError as exc:
        half = exc.object[exc.start : exc.start + 2].decode("utf-16-le", "surrogatepass")
        problem = f"\\u{ord(half):04x} is half of a UTF-16 surrogate pair; write the character itself"
        raise yaml.constructor.ConstructorError(None, None, problem, mark) from None


def _excerpt(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 4]}...{text[-1]}"


def _load_yaml(text: str, file: Path) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        problem = f"{exc.problem or exc.context}{context}"
        position = (mark.line, mark.column) if mark else None
    except yaml.reader.ReaderError as exc:  # a control character; it carries an offset, not a line
        problem = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        line_start = text.rfind("\n", 0, exc.position) + 1
        position = (text.count("\n", 0, exc.position), exc.position - line_start)
    except RecursionError:  # a chain of merges ("<<") through many anchors: PyYAML recurses along it
        problem, position = "nested too deeply (through anchors and merges)", None
    where = f"line {position[0] + 1}, column {position[1] + 1}: " if position else ""
    raise SpecError(file, [Problem("", f"{where}invalid YAML: {problem}")])


def _api_items(data: Any, file: Path) -> list[Any]:
    if data is None:
        message = "the file is empty; expected a list of APIs (each item starting with '- name: ...')"
    elif not isinstance(data, list):
        got = describe_value(data)
        message = f"expected a list of APIs (each item starting with '- name: ...'), got {got}"
    elif not data:
        message = "the list of APIs is empty; define at least one API"
    else:
        return data
    raise SpecError(file, [Problem("", message)])


def _expansion_problems(items: list[Any], prefixes: list[str]) -> list[Problem]:
    """Values that YAML aliases make contain themselves, or nest or expand beyond `MAX_DEPTH`/`MAX_VALUES`.

    Each distinct collection is walked once (aliases share them), so a small alias bomb costs little here.
    """
    walked: dict[int, tuple[int, int]] = {}  # id of a walked collection -> (values, levels), aliases expanded
    open_ids = {id(items)}  # collections being walked: meeting one again is a cycle
    total = 0

    def walk(value: Any, path: str, depth: int) -> tuple[int, int]:
        if not isinstance(value, dict | list | tuple):
            return 1, 0
        key = id(value)
        if key in open_ids:
            raise _Expansion(path, "contains itself through a YAML alias (an anchor used inside its own value)")
        size, levels = walked.get(key, (0, 0))  # a collection met again through an alias costs nothing new
        if depth + levels > MAX_DEPTH:
            raise _Expansion(path, f"nested more than {MAX_DEPTH} levels deep (through YAML aliases)")
        if size:
            return size, levels
        open_ids.add(key)
        size = 1
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for name, child in children:
            child_size, child_levels = walk(child, _child_path(path, name, isinstance(value, dict)), depth + 1)
            size += child_size
            levels = max(levels, child_levels + 1)
            if size + total > MAX_VALUES:
                raise _Expansion(path, f"YAML aliases expand the file to more than {MAX_VALUES} values")
        open_ids.discard(key)
        walked[key] = size, levels
        return size, levels

    for item, prefix in zip(items, prefixes, strict=True):
        try:
            total += walk(item, prefix, 2)[0]  # the list of APIs is the first level
        except _Expansion as exc:
            return [Problem(exc.path, exc.message)]
    return []


class _Expansion(Exception):
    """Ends the walk at the first value past the bounds: one problem says enough, and walking on costs."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message


def _child_path(path: str, name: Any, mapping: bool) -> str:
    if not mapping:
        return f"{path}[{name}]"
    return f"{path}.{name if isinstance(name, str) else describe_value(name)}"


def _name(item: Any) -> Any:
    return item.get("name") if isinstance(item, dict) else None


def _kind(item: Any) -> Any:
    return item.get("kind") if isinstance(item, dict) else None


def _prefixes(items: list[Any]) -> list[str]:
    """Each API's path prefix: its name when valid and unique, else its position `[i]`."""
    counts = Counter(name for name in map(_name, items) if isinstance(name, str))
    return [
        name if is_api_name(name) and counts[name] == 1 else f"[{index}]"
        for index, name in enumerate(map(_name, items))
    ]


def _duplicate_names(items: list[Any]) -> list[Problem]:
    first_index: dict[str, int] = {}
    problems = []
    for index, name in enumerate(map(_name, items)):
        if not isinstance(name, str):
            continue
        first = first_index.setdefault(name, index)
        if first != index:
            message = f"duplicate API name {name!r} (also used by the API at [{first}]); names must be unique"
            problems.append(Problem(f"[{index}].name", message))
    return problems


def _duplicate_endpoints(apis: list[tuple[str, ApiSpec]]) -> list[Problem]:
    first_owner: dict[str, str] = {}
    problems = []
    for prefix, api in apis:
        owner = first_owner.setdefault(api.endpoint, prefix)
        if owner != prefix:
            message = f"duplicate endpoint {api.endpoint!r} (also used by {owner}); endpoints must be unique"
            problems.append(Problem(f"{prefix}.networking.endpoint", message))
    return problems


def _splitters_of_splitters(items: list[Any], apis: list[tuple[str, ApiSpec]]) -> list[Problem]:
    """A splitter's targets must be RealtimeAPIs: name those that are splitters of this file.

    Items that failed validation count by their written kind. A target not in the file is no problem here:
    it may be deployed already, which deploying checks.
    """
    names = (_name(item) for item in items if _kind(item) == "TrafficSplitter")
    splitters = {name for name in names if isinstance(name, str)}  # a name may be any YAML value, even a list
    problems = []
    for prefix, api in apis:
        targets = api.apis if isinstance(api, TrafficSplitter) else []
        for index, name in enumerate(target.name for target in targets):
            if name in splitters:
                message = f"{name!r} is a TrafficSplitter; splitters can only send traffic to RealtimeAPIs"
                problems.append(Problem(f"{prefix}.apis[{index}].name", message))
    return problems


def _validate_api(item: Any, prefix: str, context: dict[str, Path]) -> tuple[ReadApi | None, list[Problem]]:
    if not isinstance(item, dict):
        message = f"expected a mapping with the API's fields (name, kind, ...), got {describe_value(item)}"
        return None, [Problem(prefix, message)]
    kind = item.get("kind")
    model = API_KINDS.get(kind) if isinstance(kind, str) else None
    era = legacy_era(item)
    if era is not None and (model is RealtimeAPI or "kind" not in item):  # Cortex-era specs may omit kind
        return _validate_legacy(item, era, prefix, context)
    if model is None:
        allowed = ", ".join(API_KINDS)
        got = "is required" if "kind" not in item else f"unknown kind {describe_value(kind)}"
        return None, [Problem(f"{prefix}.kind", f"{got}; allowed kinds: {allowed}")]
    try:
        return ReadApi(model.model_validate(item, context=context), item, []), []
    except ValidationError as exc:
        return None, _translate(exc, model, prefix)


def _validate_legacy(
    item: dict[str, Any], era: Era, prefix: str, context: dict[str, Path]
) -> tuple[ReadApi | None, list[Problem]]:
    """Validate against the historical schema, convert, and validate the result as a native API.

    Problems are reported at the fields as the user wrote them, also those the native model finds.
    """
    legacy_model = LEGACY_MODELS[era]
    try:
        legacy = legacy_model.model_validate(item, context=context)
    except ValidationError as exc:
        return None, _translate(exc, legacy_model, prefix)
    conversion = convert(legacy, context.get("project_dir"))
    try:
        api = RealtimeAPI.model_validate(conversion.native, context=context)
    except ValidationError as exc:
        problems = _translate(exc, RealtimeAPI, "")
        return None, [Problem(_join(prefix, conversion.legacy_path(p.path)), p.message) for p in problems]
    notices = [Problem(_join(prefix, path), message) for path, message in conversion.notices]
    return ReadApi(api, conversion.native, notices), []


def _join(prefix: str, path: str) -> str:
    return f"{prefix}{path}" if not path or path.startswith("[") else f"{prefix}.{path}"


def _translate(exc: ValidationError, model: type[BaseModel], prefix: str) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if loc[-1:] == ("[key]",) or error["type"] == "invalid_key":  # YAML keys may be numbers, dates...
            key = describe_value(error["input"])
            message = f"keys must be strings, got {key} (quote it)"
            parent = loc[:-2] if loc[-1:] == ("[key]",) else loc[:-1]
            problems.append(Problem(_path(prefix, (*parent, key)), message))
        elif error["type"] == ISSUES_ERROR:
            for field, message in error["ctx"]["issues"]:
                problems.append(Problem(_path(prefix, (*loc, *field.split("."))), message))
        else:
            problems.append(Problem(_path(prefix, loc), _message(error, model)))
    return problems


def _path(prefix: str, loc: tuple[str | int, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part:
            path += f".{part}" if path else part
    return path


def _message(error: ErrorDetails, model: type[BaseModel]) -> str:
    kind, loc, value = error["type"], error["loc"], error["input"]
    ctx = error.get("ctx", {})
    field = _field_at(model, loc)
    if kind == "missing":
        return "is required" + _allowed_literals(field)
    if kind == "extra_forbidden":
        return _unknown_field(loc[-1], _model_at(model, loc[:-1]))
    if kind == "literal_error":
        return f"expected {ctx['expected']}, got {describe_value(value)}"
    if kind in _EXPECTED_TYPES:
        hint = _BOOL_HINT if isinstance(value, bool) else ""
        return f"expected {_EXPECTED_TYPES[kind]}, got {describe_value(value)}{hint}"
    if kind in _BOUND_ERRORS:
        return f"must be {_bounds(field, ctx)}, got {describe_value(value)}"
    if kind == "finite_number":
        return f"must be a finite number, got {describe_value(value)}"
    if kind == "value_error":
        return str(ctx["error"])
    return error["msg"]


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The nested model class a location points into, through fields and list items (`apis[0]`)."""
    annotation: Any = model
    for part in loc:
        if isinstance(part, int) and get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
            continue
        nested = _nested_model(annotation)
        field = nested.model_fields.get(part) if nested and isinstance(part, str) else None
        if field is None:
            return None
        annotation = field.annotation
    return _nested_model(annotation)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, also when it may be null (`Model | None`)."""
    if get_origin(annotation) in (Union, UnionType):
        models = [arg for arg in get_args(annotation) if arg is not type(None)]
        annotation = models[0] if len(models) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _field_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> FieldInfo | None:
    parent = _model_at(model, loc[:-1]) if loc else None
    return parent.model_fields.get(loc[-1]) if parent and isinstance(loc[-1], str) else None


def _unknown_field(name: str | int, model: type[BaseModel] | None) -> str:
    if model is None:
        return f"unknown field {name!r}"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(name), allowed, n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {name!r}{suggestion}; allowed: {', '.join(allowed)}"


def _allowed_literals(field: FieldInfo | None) -> str:
    if field is None or get_origin(field.annotation) is not Literal:
        return ""
    return "; allowed: " + ", ".join(repr(value) for value in get_args(field.annotation))


def _bounds(field: FieldInfo | None, ctx: dict[str, Any]) -> str:
    """The field's whole allowed range ("> 0 and <= 30000"), not only the bound that failed."""
    constraints = [
        (symbol, getattr(item, key))
        for item in (field.metadata if field else [])
        for key, symbol in _BOUND_SYMBOLS.items()
        if hasattr(item, key)
    ] or [(symbol, ctx[key]) for key, symbol in _BOUND_SYMBOLS.items() if key in ctx]
    return " and ".join(f"{symbol} {limit}" for symbol, limit in constraints)
