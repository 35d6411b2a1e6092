"""THE project schema: every setting is declared once, here, as dataclass field metadata.

A setting is a dataclass field made with `setting(...)`: its type comes from the annotation,
everything else (help, range, choices, unit, what null means, its CLI flag) from the `Spec`.
Everything else is derived from these declarations and must not be written again by hand:

- loading `project.json` (unknown keys and wrong types name the field: `"pretrained": "false"`
  is an error, not True) and validation before a run (`check_value`, `validate`);
- the `train` command's flags, with defaults and help (`add_flags`, `given_flags`);
- the window's Data and Training forms (gui/forms.py reads `settings_of`);
- the JSON Schema of project.json (`json_schema`) and the README's table (`markdown_reference`).

Kept free of the project's own classes so that every core module can declare settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

from freezer_app.core.errors import FreezerError, ProjectError

_SPEC = "freezer.setting"


@dataclass(frozen=True)
class Spec:
    """What a setting means and allows, beyond its type."""

    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False  # minimum itself not allowed
    exclusive_maximum: bool = False
    choices: tuple[str, ...] = ()
    open_choices: bool = False  # choices are suggestions (e.g. devices); any text is checked later
    unit: str = ""
    none: str = ""  # what null means, e.g. "the model's own size"; nullable settings only
    none_word: str = "none"  # how null is written on the command line (--grad-clip off)
    zero: str = ""  # what 0 means for a count where 0 switches something off
    flag: str | None = None  # the `train` flag; None: --name-with-dashes; "": no flag
    metavar: str = ""
    label: str = ""  # the form's label; default: the name in words
    form: bool = True  # shown in the window's forms
    resumable: bool = False  # may be changed when resuming a run
    required: bool = False  # must be non-empty before a run starts
    example: str = ""  # a value to suggest in messages
    flag_alone: str = ""  # the value the flag stands for when given without one (--ema)


def setting(
    default: Any = MISSING, *, default_factory: Any = MISSING, help: str, **spec: Any
) -> Any:
    """A dataclass field that is a project setting (see `Spec` for the keywords)."""
    metadata = {_SPEC: Spec(help=help, **spec)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------------- introspection
@dataclass(frozen=True)
class Setting:
    """One declared setting, with its type worked out from the annotation."""

    section: str  # dotted path of the dataclass holding it ("" at the top, "train", "plan")
    name: str
    kind: type  # int, float, str, bool, list, or a dataclass
    item: type | None  # element type of a list
    nullable: bool
    owner: type
    spec: Spec

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def default(self) -> Any:
        f = next(f for f in fields(self.owner) if f.name == self.name)
        if f.default is not MISSING:
            return f.default
        if f.default_factory is not MISSING:
            return f.default_factory()
        return None

    @property
    def flag(self) -> str:
        if self.spec.flag is not None:
            return self.spec.flag
        return "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        return self.spec.label or self.name.replace("_", " ").capitalize()

    @property
    def is_nested(self) -> bool:
        return is_dataclass(self.kind) or (self.item is not None and is_dataclass(self.item))


def _parse_annotation(annotation: Any) -> tuple[type, type | None, bool]:
    nullable = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return list, item, nullable
    return annotation, None, nullable


_CACHE: dict[tuple[type, str], list[Setting]] = {}


def settings_of(cls: type, section: str = "") -> list[Setting]:
    """The settings a dataclass declares, in declaration order (not those of nested classes)."""
    cached = _CACHE.get((cls, section))
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        spec = f.metadata.get(_SPEC)
        if spec is None:
            continue
        kind, item, nullable = _parse_annotation(hints[f.name])
        out.append(Setting(section, f.name, kind, item, nullable, cls, spec))
    _CACHE[(cls, section)] = out
    return out


def all_settings(cls: type, section: str = "") -> list[Setting]:
    """Every setting under `cls`, nested sections included (lists of records are one setting)."""
    out = []
    for s in settings_of(cls, section):
        if is_dataclass(s.kind):
            out += all_settings(s.kind, s.key)
        else:
            out.append(s)
    return out


def find(cls: type, key: str) -> Setting:
    for s in all_settings(cls):
        if s.key == key:
            return s
    raise KeyError(key)


def get_value(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def set_value(obj: Any, key: str, value: Any) -> None:
    *path, name = key.split(".")
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, name, value)


# ---------------------------------------------------------------------- checking values
_KIND_WORDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}


def describe_kind(s: Setting) -> str:
    if s.kind is list:
        what = "a list of records" if is_dataclass(s.item) else "a list of text"
    elif is_dataclass(s.kind):
        what = "an object"
    else:
        what = _KIND_WORDS.get(s.kind, s.kind.__name__)
    return what + (" or null" if s.nullable else "")


def _type_ok(kind: type, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        )
    return isinstance(value, kind)


def range_text(s: Setting) -> str:
    """The allowed values in words: '> 0', '0 .. 1 (1 excluded)', 'one of adamw, sgd'."""
    spec = s.spec
    if spec.choices:
        return ("e.g. " if spec.open_choices else "one of ") + ", ".join(spec.choices)
    lo, hi = spec.minimum, spec.maximum
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f"{'>' if spec.exclusive_minimum else '≥'} {_num(lo)}"
    if lo is None:
        return f"{'<' if spec.exclusive_maximum else '≤'} {_num(hi)}"
    left = "(" if spec.exclusive_minimum else "["
    right = ")" if spec.exclusive_maximum else "]"
    return f"{left}{_num(lo)}, {_num(hi)}{right}"


def _num(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def range_problem(s: Setting, value: Any) -> str | None:
    """Why a value of the right type is not allowed, or None when it is."""
    spec = s.spec
    if value is None:
        return None
    if spec.choices and not spec.open_choices and value not in spec.choices:
        return f"must be one of {', '.join(spec.choices)} (got {value!r})"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = spec.minimum, spec.maximum
        low_bad = lo is not None and (value <= lo if spec.exclusive_minimum else value < lo)
        high_bad = hi is not None and (value >= hi if spec.exclusive_maximum else value > hi)
        if low_bad or high_bad:
            where = range_text(s)
            return f"must be {'in ' if where[0] in '[(' else ''}{where} (got {_num(value)})"
    return None


def setting_error(
    s: Setting, problem: str, error: type[FreezerError] = ProjectError
) -> FreezerError:
    hint = f"{s.spec.help}."
    example = s.spec.example or (json.dumps(s.default) if not s.is_nested else "")
    if example and example != "null":
        hint += f" The default is {example}."
    return error(f"Setting {s.key} {problem}.", hint)


def check_value(
    s: Setting, value: Any, error: type[FreezerError] = ProjectError, where: str = ""
) -> Any:
    """The value, normalised (ints become floats for float settings), or a clear error."""
    key = where or s.key
    if value is None:
        if s.nullable:
            return None
        raise error(
            f"Setting {key} must be {describe_kind(s)}, not null.",
            f"{s.spec.help}. The default is {json.dumps(s.default)}.",
        )
    if s.kind is list:
        if not isinstance(value, list):
            raise error(
                f"Setting {key} must be {describe_kind(s)}, not {json.dumps(value)}.",
                _list_hint(s),
            )
        if is_dataclass(s.item):
            out = []
            for i, v in enumerate(value):
                if isinstance(v, s.item):  # built in code (the window): check it as it is
                    validate(v, f"{key}[{i}]", error)
                    out.append(v)
                else:
                    out.append(load(s.item, v, f"{key}[{i}]", error))
            return out
        for v in value:
            if not _type_ok(s.item, v):
                raise error(
                    f"Setting {key} must be {describe_kind(s)}, not {json.dumps(value)}.",
                    _list_hint(s),
                )
        return list(value)
    if is_dataclass(s.kind):
        return load(s.kind, value, key, error)
    if not _type_ok(s.kind, value):
        raise error(
            f"Setting {key} must be {describe_kind(s)}, not {json.dumps(value)}.",
            "Fix the project file (numbers without quotes, true/false, null).",
        )
    if s.kind is float:
        value = float(value)
    problem = range_problem(s, value)
    if problem:
        raise (
            setting_error(s, problem, error)
            if not where
            else error(f"Setting {key} {problem}.", f"{s.spec.help}.")
        )
    return value


def _list_hint(s: Setting) -> str:
    if is_dataclass(s.item):
        keys = ", ".join(x.name for x in settings_of(s.item))
        return f"Each entry is an object with: {keys}."
    return f'Write e.g. "{s.name}": ["layer1", "type:BatchNorm2d"].'


def load(cls: type, data: Any, section: str = "", error: type[FreezerError] = ProjectError) -> Any:
    """Build a dataclass from JSON data, checking every key and value against the schema."""
    where = section or "the project"
    if not isinstance(data, dict):
        raise error(
            f"{where.capitalize() if not section else 'Setting ' + section} must be a JSON object, "
            f"not {json.dumps(data)[:60]}.",
            "Check the file.",
        )
    known = {s.name: s for s in settings_of(cls, section)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise error(
            f"Unknown key(s) in {where}: {', '.join(unknown)}.",
            f"Known keys: {', '.join(known)}.",
        )
    values = {}
    for name, value in data.items():
        s = known[name]
        values[name] = check_value(s, value, error, s.key)
    return cls(**values)


def validate(obj: Any, section: str = "", error: type[FreezerError] = ProjectError) -> None:
    """Check every setting of an object built in code (the window, flags) before a run."""
    for s in settings_of(type(obj), section):
        value = getattr(obj, s.name)
        if is_dataclass(s.kind):
            validate(value, s.key, error)
            continue
        if s.kind is list and is_dataclass(s.item):
            for v in value:
                validate(v, s.key, error)
            continue
        check_value(s, value, error)
        if s.spec.required and not value:
            raise error(f"No {s.label.lower()} chosen.", f"{s.spec.help}.")


# ---------------------------------------------------------------------- text form
def format_value(s: Setting, value: Any) -> str:
    """How a value is written in a form or on the command line; floats exactly (repr)."""
    if value is None:
        return s.spec.none_word
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_text(s: Setting, text: str) -> Any:
    """A value from text typed by a user (a flag or a form); ValueError says what is wrong."""
    text = text.strip()
    if s.nullable and text.lower() in {s.spec.none_word, "none", "null", ""}:
        return None
    if s.kind is bool:
        words = {"true": True, "yes": True, "on": True, "1": True}
        words.update({"false": False, "no": False, "off": False, "0": False})
        if text.lower() not in words:
            raise ValueError("must be true or false")
        return words[text.lower()]
    if s.kind is int:
        try:
            value: Any = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    elif s.kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number (1e-4 and 0.0001 both work)") from None
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite number")
    else:
        value = text
    problem = range_problem(s, value)
    if problem:
        raise ValueError(problem)
    return value


# ---------------------------------------------------------------------- command-line flags
def flag_settings(cls: type) -> list[Setting]:
    return [s for s in all_settings(cls) if s.spec.flag != "" and s.kind is not list]


def add_flags(
    parser: argparse.ArgumentParser | Any, cls: type, exclude: tuple[str, ...] = ()
) -> None:
    """One flag per setting of `cls` (sections in `exclude` left out), help and default from
    the schema. Flags not given are absent from the parsed namespace (see `given_flags`)."""
    for s in flag_settings(cls):
        if s.section not in exclude:
            add_flag(parser, s)


def add_flag(parser: argparse.ArgumentParser | Any, s: Setting, **overrides: Any) -> None:
    """The flag of one setting; its value lands in the namespace under the setting's key."""
    default = s.default
    shown = s.spec.none if default is None and s.spec.none else format_value(s, default)
    help_text = s.spec.help
    if s.spec.unit:
        help_text += f" [{s.spec.unit}]"
    allowed = range_text(s) if not s.spec.choices or s.spec.open_choices else ""
    if allowed:
        help_text += f"; {allowed}"
    if s.nullable and s.spec.none:
        help_text += f"; {s.spec.none_word}: {s.spec.none}"
    if s.spec.zero:
        help_text += f"; 0: {s.spec.zero}"
    if s.spec.flag_alone:
        help_text += f"; {s.flag} alone: {s.spec.flag_alone}"
    if s.spec.required:
        help_text += " (required)"
    elif shown:
        help_text += f" (default: {shown})"
    kwargs: dict[str, Any] = {
        "dest": s.key,
        "default": argparse.SUPPRESS,
        "help": help_text.replace("%", "%%"),
    }
    kwargs.update(overrides)
    if s.kind is bool:
        kwargs.setdefault("action", argparse.BooleanOptionalAction)
        parser.add_argument(s.flag, **kwargs)
        return
    if s.spec.choices and not s.spec.open_choices:
        kwargs["choices"] = list(s.spec.choices)
        kwargs.setdefault("metavar", s.spec.metavar or None)
    else:
        kwargs.setdefault("metavar", s.spec.metavar or _metavar(s))
    if s.spec.flag_alone:
        kwargs.update(nargs="?", const=_flag_parser(s)(s.spec.flag_alone))
    parser.add_argument(s.flag, type=_flag_parser(s), **kwargs)


def _metavar(s: Setting) -> str:
    return {int: "N", float: "F"}.get(s.kind, "TEXT")


def _flag_parser(s: Setting) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return parse_text(s, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = s.name  # argparse names the type in some messages
    return parse


def fill_flags_alone(argv: list[str], cls: type) -> list[str]:
    """argv with the value written in where a flag that may stand alone (`--ema`) is followed
    by a word that is not its value (`--ema PROJECT.json`): argparse would take the word."""
    alone = {s.flag: s for s in flag_settings(cls) if s.spec.flag_alone}
    out: list[str] = []
    for i, word in enumerate(argv):
        out.append(word)
        s = alone.get(word)
        if s is None:
            continue
        following = argv[i + 1] if i + 1 < len(argv) else None
        if following is None or following.startswith("-"):
            continue  # argparse's const covers it
        try:
            float(following)  # a number, in range or not: argparse checks it and says so
        except ValueError:
            # A project file follows (`--ema p.json`); any other word is a bad value, which
            # argparse then names (`--ema abc` is no missing project file "abc").
            project = following.endswith(".json") or os.path.exists(following)
            if following != s.spec.none_word and project:
                out.append(s.spec.flag_alone)
    return out


def given_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """{setting key: value} for the setting flags present on the command line."""
    present = vars(args)
    return {s.key: present[s.key] for s in flag_settings(cls) if s.key in present}


# ---------------------------------------------------------------------- documents
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def json_schema(cls: type, title: str = "Freezer project") -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of a dataclass of settings, e.g. of project.json."""
    schema = _object_schema(cls, "")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        **schema,
    }


def _object_schema(cls: type, section: str) -> dict[str, Any]:
    props = {}
    for s in settings_of(cls, section):
        props[s.name] = _value_schema(s)
    return {
        "type": "object",
        "description": (cls.__doc__ or "").strip().split("\n")[0],
        "properties": props,
        "additionalProperties": False,
    }


def _value_schema(s: Setting) -> dict[str, Any]:
    spec = s.spec
    if is_dataclass(s.kind):
        out = _object_schema(s.kind, s.key)
        out["description"] = spec.help
        return out
    if s.kind is list:
        items = _object_schema(s.item, s.key) if is_dataclass(s.item) else {"type": "string"}
        out = {"type": "array", "items": items}
    else:
        out = {"type": _JSON_TYPES[s.kind]}
        if spec.choices and not spec.open_choices:
            out["enum"] = list(spec.choices)
        if spec.minimum is not None:
            out["exclusiveMinimum" if spec.exclusive_minimum else "minimum"] = spec.minimum
        if spec.maximum is not None:
            out["exclusiveMaximum" if spec.exclusive_maximum else "maximum"] = spec.maximum
    if s.nullable:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"].append(None)
    out["description"] = spec.help + (f" (null: {spec.none})" if spec.none else "")
    out["default"] = s.default
    return out


def markdown_reference(cls: type) -> str:
    """The README's table of every project.json key."""
    lines = [
        "| key | type | default | allowed | flag | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for s in all_settings(cls):
        if s.kind is list and is_dataclass(s.item):
            kind = f"list of {{{', '.join(x.name for x in settings_of(s.item))}}}"
        else:
            kind = {int: "integer", float: "number", str: "text", bool: "true/false"}.get(
                s.kind, "list of text"
            )
        if s.nullable:
            kind += " or null"
        default = json.dumps(s.default)
        allowed = range_text(s)
        if s.nullable and s.spec.none:
            allowed = (allowed + "; " if allowed else "") + f"null: {s.spec.none}"
        if s.spec.zero:
            allowed = (allowed + "; " if allowed else "") + f"0: {s.spec.zero}"
        if s.spec.unit:
            allowed = (allowed + " " if allowed else "") + f"({s.spec.unit})"
        flag = f"`{s.flag}`" if s.spec.flag != "" and s.kind is not list else ""
        meaning = s.spec.help + (". May change on resume." if s.spec.resumable else "")
        lines.append(
            f"| `{s.key}` | {kind} | `{default}` | {allowed} | {flag} | {meaning} |".replace(
                "||", "| |"
            )
        )
    return "\n".join(lines) + "\n"
