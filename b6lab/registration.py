"""What one `register(name, factory, unavailable=None)` call makes: a Registration, checked.

The check that matters most is the factory's signature: b6lab builds every part as
`factory(*FACTORY_ARGUMENTS[kind], **options)` (b6lab.hookspecs), so a factory that cannot be
called that way is an error naming the plugin's file when it registers, not a TypeError in the
middle of a run. The factory's keyword-only arguments (other than those its kind always gets by
keyword) are the plugin's options, read here once; their values are checked when a config is
read (validation.plugin_options) and passed on as they are when the part is built (parts.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from b6lab import hookspecs
from b6lab.errors import PluginError, exception_line


@dataclass(frozen=True)
class Registration:
    """One registered part: its kind and name, how to build it, and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    source: str
    unavailable: Callable[..., str | None] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # every option, required ones as None
    version: str = "unknown"
    required: tuple[str, ...] = ()  # keyword-only options without a default

    def why_unavailable(self, **context) -> str | None:
        """None if this part can run in `context` (device, dtype, head_dim), else the reason."""
        if self.unavailable is None:
            return None
        try:
            return self.unavailable(**context)
        except Exception as exc:
            raise PluginError(f"{self.label}: its unavailable(**context) raised {exception_line(exc)}") from exc

    def build(self, *args, **options):
        return self.factory(*args, **options)

    def unset_required(self, options: dict) -> str | None:
        """The first required option that `options` leaves unset (None), if any."""
        return next((key for key in self.required if options.get(key) is None), None)

    @property
    def label(self) -> str:
        """`attention plugin 'alibi' (from file /x/alibi.py)`: how messages name it."""
        return f"{self.kind} plugin {self.name!r} (from {self.source})"

    @property
    def description(self) -> str:
        """The first paragraph of the factory's docstring, on one line."""
        doc = inspect.getdoc(self.factory) or ""
        return " ".join(doc.split("\n\n")[0].split())


def factory_arguments(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(positional, keyword) arguments b6lab passes a `kind` factory besides the plugin's options."""
    names = hookspecs.FACTORY_ARGUMENTS[kind]
    cut = names.index("*") if "*" in names else len(names)
    return names[:cut], names[cut + 1:]


def from_register_call(kind: str, source: str, version: str, args: tuple, kwargs: dict) -> Registration:
    """A Registration from one `register(...)` call, or an error saying what is wrong with the call.

    The factory's keyword-only arguments (other than those its kind always gets) are its options;
    it must be callable as factory(*fixed, **options), which is how b6lab builds it."""
    where = f"{source}: in b6lab_register_{kind},"
    try:
        bound = inspect.signature(lambda name, factory, unavailable=None: None).bind(*args, **kwargs)
    except TypeError:
        shown = ", ".join([_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()])
        first = "; it needs a name first, e.g. register('my-part', factory)" if args and callable(args[0]) else ""
        raise PluginError(f"{where} register({shown}) must be register(name, factory, unavailable=None){first}") from None
    name, factory, unavailable = bound.arguments["name"], bound.arguments["factory"], bound.arguments.get("unavailable")
    if not isinstance(name, str) or not name:
        raise PluginError(f"{where} register()'s first argument is the part's name, a string; got {_short(name)}")
    if not callable(factory):
        raise PluginError(f"{where} the factory of {kind} plugin {name!r} is a {type(factory).__name__} object, "
                          "not a function or class that builds the part")
    if unavailable is not None and not callable(unavailable):
        raise PluginError(f"{where} `unavailable` of {kind} plugin {name!r} must be a function (**context) -> reason or None")
    positional, fixed = factory_arguments(kind)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        raise PluginError(f"{where} the factory of {kind} plugin {name!r} has no signature b6lab can read") from None
    keyword_only = [p for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY and p.name not in fixed]
    options = {p.name: None if p.default is p.empty else p.default for p in keyword_only}
    required = tuple(p.name for p in keyword_only if p.default is p.empty)
    try:
        signature.bind(*positional, **{key: None for key in fixed + required})
    except TypeError as exc:
        call = ", ".join(positional + tuple(f"{key}=" for key in fixed) + ("**options",))
        raise PluginError(f"{where} the factory of {kind} plugin {name!r}, {_qualname(factory)}{signature}, "
                          f"cannot be called as factory({call}): {exc}") from None
    return Registration(kind, name, factory, source, unavailable, options, version, required)


def registration(kind: str, name: str, factory: Callable, source: str, unavailable=None) -> Registration:
    """A factory checked as `register(name, factory, unavailable)` checks it, without registering it."""
    return from_register_call(kind, source, "unknown", (name, factory, unavailable), {})


def _short(value: Any) -> str:
    text = " ".join((getattr(value, "__qualname__", None) or repr(value)).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _qualname(factory: Callable) -> str:
    return getattr(factory, "__qualname__", type(factory).__name__)
