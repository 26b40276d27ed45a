"""Pydantic's validation errors in the house wording, with the file and line of each key.

`ado.yaml:5: unknown key `agent.tiemout_s`; did you mean `timeout_s`?` rather than
`agent.tiemout_s: Extra inputs are not permitted`. Line numbers come from the YAML node
tree (`yaml.compose` keeps every key's mark); a key that is not in the file (it came from
a context, an environment variable or a flag) is named without one.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

KeyPath = tuple[str, ...]


def key_lines(text: str) -> dict[KeyPath, int]:
    """The 1-based line of every mapping key and list item of a YAML document, by its path
    (`("agent", "cmd")`, `("providers", "claude", "modes", "0")`); {} if it does not parse."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[KeyPath, int] = {}

    def walk(node: yaml.Node, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            children = [(key.value, key, value) for key, value in node.value]
        elif isinstance(node, yaml.SequenceNode):
            children = [(str(index), item, item) for index, item in enumerate(node.value)]
        else:
            return
        for name, mark_node, value in children:
            if isinstance(name, str):
                lines.setdefault((*path, name), mark_node.start_mark.line + 1)
                walk(value, (*path, name))

    if root is not None:
        walk(root, ())
    return lines


def closest(word: str, choices: Iterable[str]) -> list[str]:
    """The choices nearest to `word` (difflib), all of those tied for nearest; [] if none is
    near. Kept in the order of `choices`."""
    choices = list(dict.fromkeys(choices))
    scores = {
        choice: difflib.SequenceMatcher(None, word.lower(), choice.lower()).ratio()
        for choice in choices
    }
    best = max(scores.values(), default=0.0)
    return [choice for choice in choices if scores[choice] == best] if best >= 0.6 else []


def did_you_mean(word: str, choices: Iterable[str], quote: str = "`") -> str:
    """`; did you mean `x`?` (or `x` or `y` on a tie), or "" when nothing is near."""
    near = closest(word, choices)
    if not near:
        return ""
    return "; did you mean " + " or ".join(f"{quote}{name}{quote}" for name in near) + "?"


def _unwrap(annotation: Any) -> Any:
    """The model (or container) inside `X | None`, `Annotated[X, ...]`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        models = [arg for arg in args if isinstance(arg, type) and issubclass(arg, BaseModel)]
        return _unwrap((models or args)[0]) if args else annotation
    return annotation


def keys_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str] | None:
    """The valid keys of the mapping at `loc` under `model`, or None when that is not a
    model (a free dict such as `agent.env`, or a path pydantic cannot follow)."""
    node: Any = model
    for part in loc:
        node = _unwrap(node)
        origin = typing.get_origin(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return None
            node = field.annotation
        elif origin in (dict, Mapping) or (isinstance(origin, type) and issubclass(origin, dict)):
            node = typing.get_args(node)[1]
        elif origin in (list, tuple):
            node = typing.get_args(node)[0]
        else:
            return None
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return None


def format_validation_error(
    exc: ValidationError,
    model: type[BaseModel],
    source: str,
    lines: Mapping[KeyPath, int],
    prefixes: Sequence[KeyPath] = ((),),
    extra_top: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> str:
    """One line per problem: `source[:LINE]: what; expected what`.

    `lines` maps key paths of the file to lines; a problem's key is looked up under each of
    `prefixes` in turn (`()` for the top level, `("contexts", "staging")` for a context's
    overlay). `extra_top` names top-level keys the file may have that `model` does not
    (`contexts`, taken off before validation). A key set in `overrides` (flags and `ADO_*`
    variables) is named as theirs."""
    out: list[tuple[float, str]] = []
    for err in exc.errors():
        loc = tuple(str(part) for part in err["loc"])
        line = next((lines[(*p, *loc)] for p in prefixes if (*p, *loc) in lines), None)
        where = f"{source}:{line}" if line else source
        if _present(overrides or {}, loc):
            line, where = None, "the command line or environment (a flag or ADO_* variable)"
        dotted = ".".join(loc) or "(top)"
        if err["type"] == "extra_forbidden" and loc:
            valid = keys_at(model, err["loc"][:-1]) or []
            if len(loc) == 1:
                valid += list(extra_top)
            hint = did_you_mean(loc[-1], valid)
            if not hint and valid:
                parent = ".".join(loc[:-1])
                hint = f"; expected a key of {parent or 'the top level'}: " + ", ".join(valid)
            text = f"{where}: unknown key `{dotted}`{hint}"
        else:
            text = f"{where}: {dotted}: {err['msg']}"
        out.append((line or float("inf"), text))
    return "\n".join(text for _, text in sorted(out, key=lambda item: item[0]))


def _present(data: Mapping[str, Any], loc: KeyPath) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return bool(loc)
