"""Type checking by pydantic, with b6lab's messages: the key a user wrote, the file (or `--set`) it
came from, what would be accepted and what was given.

pydantic (v2) validates standard-library dataclasses as they are (so a config stays plain data
that pickles into a Ray worker) and coerces what YAML gives (4.0 for an integer, "3e-4" for a
number, a list for a tuple). Each of its errors names its place (`loc`), which is walked here
back to the dotted key; the message names the type the key's annotation asks for.

A plugin's options (the keyword-only arguments of its factory) are checked the same way, against
the factory's annotations (`Annotated[float, within(...)]` limits too) or, where it has none, its
defaults' types: here, once, when the config is read; building only passes them on.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from typing import Annotated, Any, Callable, Literal

import pydantic

from b6lab import registry
from b6lab.config_sources import Layers
from b6lab.errors import ConfigError, PluginError, UsageError, unknown


def check(value, annotation, key: str, file: str | None = None, verb: str = "expected"):
    """`value` as `annotation` (coerced), or a ConfigError naming `key`, `file` and what would do."""
    try:
        result = _adapter(annotation).validate_python(value)
        if not _from_bool(value, result):
            return result
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "value_error":  # a `within` limit: its own words ("must be a positive number, got -1")
            raise ConfigError(str(first["ctx"]["error"]), key=key, file=file) from None
    raise ConfigError(f"{verb} {type_name(annotation)}, got {value!r}", key=key, file=file)


def is_a(value, annotation) -> bool:
    """Whether `value` is already of `annotation`, strictly (True is no 1, "1" no number)."""
    try:
        _adapter(annotation).validate_python(value, strict=True)
    except pydantic.ValidationError:
        return False
    return True


def build(cls, data: dict, where: Callable[[str], str | None], verb: str = "expected", prefix: str = "",
          names: dict[str, str] | None = None):
    """The dataclass `cls` (nested ones too) from the nested dict `data`. `where(key)` is the file a
    key came from; a key a dataclass lacks (with extra="forbid") is unknown as `names[its parent]`."""
    try:
        result = _adapter(cls).validate_python(data)
        loc, error = next(_numbers_from_bools(data, result), None), "bool_as_number"
        if loc is None:
            return result
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        # A misspelt key is the cause of the required key it leaves missing: name it first.
        first = next((e for e in errors if e["type"] in ("extra_forbidden", "unexpected_keyword_argument")), errors[0])
        loc, error = first["loc"], first["type"]
    path, annotation, owner = _place(cls, loc)
    key = prefix + ".".join(path)
    if error in ("extra_forbidden", "unexpected_keyword_argument"):
        message = unknown(path[-1], [f.name for f in dataclasses.fields(owner)], (names or {}).get(".".join(path[:-1]), "key"))
    elif error == "value_error":  # a `within` check: its own words
        message = str(first["ctx"]["error"])
    elif error in ("missing", "missing_argument"):
        message = f"is missing: {verb} {type_name(annotation)}"
    else:
        message = f"{verb} {type_name(annotation)}, got {_value_at(data, path)!r}"
    raise ConfigError(message, key=key, file=where(key))


def within(test: Callable[[Any], bool], accepted: str, limit: str | None = None) -> pydantic.AfterValidator:
    """A check on a value of the right type, for `Annotated[int, within(...)]`: "must be {accepted}, got
    {value}". Unlike Field(gt=...), it leaves the type's name alone in a type error ("expected an integer");
    as one choice of a union, where pydantic's error is the union's, the name carries `limit`
    (`accepted` unless given: "expected 'auto', an integer > 0 or null")."""

    def check(value):
        if not test(value):
            raise ValueError(f"must be {accepted}, got {value}")
        return value

    check.limit = limit or accepted
    return pydantic.AfterValidator(check)


POSITIVE = within(lambda value: value > 0, "a positive number", "> 0")
NOT_NEGATIVE = within(lambda value: value >= 0, ">= 0")


def _from_bool(value, result) -> bool:
    """YAML's true/false/yes/no taken as a number (pydantic reads True as 1): a mistake, not a 1."""
    return isinstance(value, bool) and not isinstance(result, bool)


def _numbers_from_bools(data: dict, obj, path: tuple = ()):
    for key, value in data.items():
        result = getattr(obj, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(result):
            yield from _numbers_from_bools(value, result, (*path, key))
        elif _from_bool(value, result) or isinstance(value, list) and any(map(_from_bool, value, result)):
            yield (*path, key)


@functools.lru_cache(maxsize=None)
def _adapter(annotation) -> pydantic.TypeAdapter:
    if dataclasses.is_dataclass(annotation):
        return pydantic.TypeAdapter(annotation)  # its own __pydantic_config__, if any
    return pydantic.TypeAdapter(annotation, config=pydantic.ConfigDict(arbitrary_types_allowed=True))


def _place(cls, loc: tuple) -> tuple[list[str], object, type]:
    """The key path of an error's `loc` through dataclass fields and mapping keys (not into a list
    or a union's members), the annotation there, and the dataclass that holds it."""
    path, annotation, owner = [], cls, cls
    for part in loc:
        annotation = _without_none(annotation)
        if dataclasses.is_dataclass(annotation):
            owner, annotation = annotation, typing.get_type_hints(annotation, include_extras=True).get(part)
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            break
        path.append(str(part))
    return path, annotation, owner


def _without_none(annotation):
    args = typing.get_args(annotation)
    if _is_union(annotation) and len(args) == 2 and type(None) in args:
        return next(arg for arg in args if arg is not type(None))
    return annotation


def _value_at(data, path: list[str]):
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def type_name(annotation) -> str:
    """What a user may write: "an integer", "true, false or 'auto'", "one of 'a', 'b'", "a number >= 0"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        name = type_name(args[0])
        for limit in (m for info in args[1:] for m in getattr(info, "metadata", [info])):
            if getattr(limit, "min_length", None) == 1:
                name = name.replace("a ", "a non-empty ", 1)
            name += f" >= {limit.ge}" if hasattr(limit, "ge") else f" > {limit.gt}" if hasattr(limit, "gt") else ""
        return name
    if _is_union(annotation):
        names = [choice for arg in args for choice in _choices(arg)]
        return ", ".join(names[:-1]) + " or " + names[-1]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} ({', '.join(type_name(a) for a in args)})"
    if origin is list and args:
        return f"a list of {type_name(args[0]).split(' ', 1)[-1]}s"
    if origin in (list, tuple) or annotation in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(annotation):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def _choices(arg) -> list[str]:
    if typing.get_origin(arg) is Literal:
        return [repr(choice) for choice in typing.get_args(arg)]
    if typing.get_origin(arg) is Annotated:
        limits = [m.func.limit for m in typing.get_args(arg)[1:] if hasattr(getattr(m, "func", None), "limit")]
        return [" ".join([type_name(arg), *limits])]
    return ["true", "false"] if arg is bool else ["null"] if arg is type(None) else [type_name(arg)]


# ---------------------------------------------------------------------------------------------
# A run config's sections: keys beside a plugin's name are that plugin's options


def known_keys(cls, raw, prefix: str, layers: Layers, extras: dict) -> dict:
    """`raw` without the keys `cls` lacks: those go to `extras` in a plugin section, else are an error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"must be a mapping of keys, got {raw!r}", key=prefix[:-1], file=layers.where(prefix[:-1]))
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "options"]
    known = {}
    for key, value in raw.items():
        if key in fields and dataclasses.is_dataclass(hints[key]):
            known[key] = known_keys(hints[key], {} if value is None else value, f"{prefix}{key}.", layers, extras)
        elif key in fields:
            known[key] = value
        elif hasattr(cls, "plugin_keys"):
            extras.setdefault(prefix[:-1], {})[key] = value
        else:
            what, choices = (f"{prefix[:-1]} key", fields) if prefix else ("section", fields + ["preset"])
            raise ConfigError(unknown(key, choices, what), key=f"{prefix}{key}", file=layers.where(f"{prefix}{key}"))
    return known


def plugin_options(obj, extra: dict, section: str, layers: Layers) -> dict:
    """The options of the section's chosen plugins (the keys beside their names), each checked
    against its plugin's factory, defaults filled in: one flat dict, resolved once, which building
    passes on as factory(*fixed, **options) (parts.plugin_kwargs).

    An option must not share its name with a key of the section, nor with an option of the
    section's other chosen plugin: it could never be set on its own. A required option may still
    be unset here (a sweep's base config leaves it to the grid): building says so."""
    fields = [f.name for f in dataclasses.fields(obj) if f.name != "options"]
    owners: dict[str, registry.Registration] = {}
    options: dict[str, Any] = {}
    for key, kind in obj.plugin_keys.items():
        try:
            reg = registry.get(kind, getattr(obj, key))
        except UsageError as exc:
            raise ConfigError(str(exc), key=f"{section}.{key}", file=layers.where(f"{section}.{key}")) from None
        for option in reg.options:
            if option in fields:
                raise PluginError(f"{reg.label} has an option {option!r}, which is also the config key "
                                  f"{section}.{option}: the option can never be set; rename it in the plugin")
            if option in owners:
                raise PluginError(f"{section}.{option} is an option of both {owners[option].label} and {reg.label}: "
                                  "both would get the same value; rename it in one of them")
            owners[option] = reg
        options |= check_options(reg, extra, lambda option: f"{section}.{option}", layers.where)
    for key in extra:
        # A preset's option for the plugin it names (data.bpe_vocab_size beside tokenizer: bpe) is
        # dropped when the user picks another plugin; the user's own stray keys are errors.
        if key not in owners and layers.where(f"{section}.{key}") not in layers.builtin:
            plugins = ", ".join(f"{k}={getattr(obj, k)}" for k in obj.plugin_keys)
            known = sorted(fields + list(owners))
            raise ConfigError(unknown(key, known, f"{section} key") + f" (plugins in this section: {plugins})",
                              key=f"{section}.{key}", file=layers.where(f"{section}.{key}"))
    return options


def check_options(reg: registry.Registration, given: dict, key: Callable[[str], str] = str,
                  where: Callable[[str], str | None] = lambda key: None) -> dict:
    """Every option of `reg`'s plugin: each one `given` checked and coerced against the factory's
    annotation (its Annotated limits too) or, unannotated, its default's type; the others at their
    defaults (None for a required one). `key(option)` is how an error names it, `where(key)` its file."""
    hints = _factory_hints(reg.factory)
    return {option: check(given[option], hints.get(option, _type_of(default)), key(option), where(key(option)))
            if option in given else copy.deepcopy(default) for option, default in reg.options.items()}


def _factory_hints(factory) -> dict:
    try:
        # include_extras keeps Annotated[float, POSITIVE]: without it the limit is dropped and only the type checked.
        return typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory, include_extras=True)
    except Exception:  # annotations that name what this module cannot see: fall back to the defaults' types
        return {}


def _type_of(default):
    if default is None:
        return Any
    if isinstance(default, tuple):
        return tuple[tuple(type(v) for v in default)]
    return type(default)
