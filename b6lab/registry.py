"""The plugin manager: where b6lab finds its parts, and how it looks one up by name.

Plugins come from three places, in this order: the built-ins in `b6lab/plugins/`, installed
packages with an entry point in the group "b6lab", and Python files or modules a config names
in its `plugins:` list. Each plugin's hooks call `register(name, factory, unavailable=None)`.

A plugin's hooks run once, when it is loaded: every mistake in them (an unknown hook name, a
bad `register` call, a factory that cannot take its kind's arguments) is an error naming the
plugin's file or package right then. What they registered is kept until a plugin comes or goes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy

import b6lab
from b6lab import hookspecs
from b6lab.errors import PluginError, UsageError, exception_line, unknown

KINDS = tuple(hookspecs.FACTORY_ARGUMENTS)
HOOKS = {f"b6lab_register_{kind}": kind for kind in KINDS}

BUILTIN_PLUGINS = (
    "b6lab.plugins.attention",
    "b6lab.plugins.norms",
    "b6lab.plugins.feedforward",
    "b6lab.plugins.inits",
    "b6lab.plugins.parametrizations",
    "b6lab.plugins.optimizers",
    "b6lab.plugins.schedulers",
    "b6lab.plugins.datasets",
    "b6lab.plugins.corpora",
    "b6lab.plugins.tokenizers",
)


class PluginWarning(UserWarning):
    """Something about a plugin that is probably a mistake but does not stop a run."""


class _PluginManager(pluggy.PluginManager):
    def parse_hookimpl_opts(self, plugin, name):
        # As pytest does for pytest_* hooks: a function named like a b6lab hook is that hook,
        # with or without @b6lab.hookimpl (a plugin author who forgets it still gets their hook).
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in HOOKS and inspect.isfunction(inspect.getattr_static(plugin, name, None)):
            return {}
        return opts


pm = _PluginManager("b6lab")
pm.add_hookspecs(hookspecs)


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

    @property
    def label(self) -> str:
        """`attention plugin 'alibi' (from file /x/alibi.py)`: how messages name it."""
        return f"{self.kind} plugin {self.name!r} (from {self.source})"

    @property
    def description(self) -> str:
        """The first paragraph of the factory's docstring, on one line."""
        doc = inspect.getdoc(self.factory) or ""
        return " ".join(doc.split("\n\n")[0].split())


@dataclass
class _Loaded:
    source: str
    version: str
    parts: list[Registration] = field(default_factory=list)


# What each registered plugin registered, by pluggy plugin name, in the order they came.
_plugins: dict[str, _Loaded] = {}
_by_kind: dict[str, dict[str, Registration]] = {}  # the merged view, rebuilt after a plugin comes or goes
_loaded = False


def factory_arguments(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(positional, keyword) arguments b6lab passes a `kind` factory besides the plugin's options."""
    names = hookspecs.FACTORY_ARGUMENTS[kind]
    if "*" in names:
        cut = names.index("*")
        return names[:cut], names[cut + 1:]
    return names, ()


def plugin_options(factory: Callable, fixed: tuple[str, ...] = ()) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A factory's own config keys: its keyword-only arguments with their defaults (None for the
    required ones, those without a default), and the names of the required ones."""
    options, required = {}, []
    for param in inspect.signature(factory).parameters.values():
        if param.kind is param.KEYWORD_ONLY and param.name not in fixed:
            options[param.name] = None if param.default is param.empty else param.default
            if param.default is param.empty:
                required.append(param.name)
    return options, tuple(required)


def load_plugins() -> None:
    """Register the built-ins (again, if a test unregistered them) and, once per process, the
    installed entry-point plugins.

    Set B6LAB_LOAD_ENTRYPOINTS=0 to skip installed packages (the tests do, so what happens to
    be installed on a machine cannot change their results).
    """
    global _loaded
    for module_name in BUILTIN_PLUGINS:
        if pm.get_plugin(module_name) is None:
            register_plugin(importlib.import_module(module_name), module_name, f"built-in ({module_name})",
                            b6lab.__version__)
    if _loaded:
        return
    _loaded = True
    if os.environ.get("B6LAB_LOAD_ENTRYPOINTS", "1") != "0":
        for entry_point in importlib.metadata.entry_points(group="b6lab"):
            if pm.get_plugin(entry_point.name) is not None:
                continue
            dist = entry_point.dist
            where = f"package {dist.metadata['name']} {dist.version}" if dist else "an installed package"
            source = f"{where} (entry point {entry_point.name})"
            try:
                plugin = entry_point.load()
            except Exception as exc:
                raise PluginError(f"{source} failed to load: {exception_line(exc)}") from exc
            register_plugin(plugin, entry_point.name, source, dist.version if dist else "unknown")


def register_plugin(plugin: object, name: str, source: str, version: str = "unknown") -> None:
    """Register a plugin object (a module or instance with hooks) under `name`, and run its hooks.

    A mistake in the plugin is an error naming `source`; the plugin is then not registered.
    """
    _check_hook_names(plugin, source)
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{source}: {_validation_message(plugin, exc)}") from exc
    _plugins[name] = _Loaded(source, version)
    _by_kind.clear()
    try:
        _plugins[name].parts = _run_hooks(plugin, name, source, version)
    except BaseException:
        unregister_plugin(name)
        raise
    if not _plugins[name].parts and not name.startswith("b6lab.plugins."):
        hooks = ", ".join(HOOKS)
        warnings.warn(f"plugin {source} registers nothing: it has no hook that calls register(name, factory) "
                      f"(hooks: {hooks})", PluginWarning, stacklevel=2)


def unregister_plugin(name: str) -> None:
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    _plugins.pop(name, None)
    _by_kind.clear()


def parts_of(plugin_name: str) -> list[Registration]:
    """What the plugin registered under `plugin_name` (as load_plugin_path returns it) registered."""
    return list(_plugins[plugin_name].parts)


def forget_config_plugins() -> None:
    """Unregister every plugin a config's `plugins:` list loaded (files and modules), keeping the
    built-ins, the entry points and plugins registered by hand: a Python API call then sees
    exactly the plugins its own config names, not those of the call before it."""
    for name in [name for name in _plugins if name.startswith(("file:", "module:"))]:
        unregister_plugin(name)


def _check_hook_names(plugin: object, source: str) -> None:
    """A function called b6lab_* that is no hook is a misspelling (as pytest says for pytest_*);
    a hook marked by another project's HookimplMarker would silently never run."""
    for attr in dir(plugin):
        value = inspect.getattr_static(plugin, attr, None)
        if attr.startswith("b6lab_") and callable(value) and attr not in HOOKS:
            raise PluginError(f"{source}: {unknown(attr, list(HOOKS), 'b6lab hook')}")
        if attr in HOOKS:
            others = [mark[: -len("_impl")] for mark in vars(value) if mark.endswith("_impl") and mark != "b6lab_impl"] \
                if hasattr(value, "__dict__") else []
            if others and not hasattr(value, "b6lab_impl"):
                raise PluginError(f"{source}: {attr} is marked by HookimplMarker({others[0]!r}), another project's; "
                                  "decorate it with @b6lab.hookimpl")


def _validation_message(plugin: object, exc: Exception) -> str:
    """pluggy's message is several lines about hookspecs; the usual cause is a misnamed argument."""
    for hook in HOOKS:
        function = getattr(plugin, hook, None)
        if function is not None and list(inspect.signature(function).parameters) != ["register"]:
            return _hook_arguments(hook, function)
    return exception_line(exc)


def _hook_arguments(hook: str, function: Callable) -> str:
    return f"{hook}{inspect.signature(function)} must take one argument called `register`: def {hook}(register)"


def _run_hooks(plugin: object, plugin_name: str, source: str, version: str) -> list[Registration]:
    """Call each of the plugin's hooks with a `register` that checks every call."""
    parts: list[Registration] = []
    for hook_name, kind in HOOKS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            if tuple(impl.argnames) != ("register",):  # pluggy accepts a hook that takes no argument
                raise PluginError(f"{source}: {_hook_arguments(hook_name, impl.function)}")

            def register(*args, _kind=kind, **kwargs):
                parts.append(_registration(_kind, source, version, args, kwargs))

            try:
                returned = impl.function(register=register)
            except UsageError:
                raise
            except Exception as exc:
                raise PluginError(f"{source}: {hook_name} raised {exception_line(exc)}") from exc
            if returned is not None:
                raise PluginError(f"{source}: {hook_name} returned a {type(returned).__name__}, which b6lab ignores; "
                                  "call register(name, factory) once per part instead")
    return parts


def _registration(kind: str, source: str, version: str, args: tuple, kwargs: dict) -> Registration:
    """A Registration from one `register(...)` call, or an error saying what is wrong with the call."""
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
    options, required = plugin_options(factory, fixed)
    try:
        signature.bind(*positional, **{key: None for key in fixed + required})
    except TypeError as exc:
        call = ", ".join(positional + tuple(f"{key}=" for key in fixed) + ("**options",))
        raise PluginError(f"{where} the factory of {kind} plugin {name!r}, {_qualname(factory)}{signature}, "
                          f"cannot be called as factory({call}): {exc}") from None
    return Registration(kind, name, factory, source, unavailable, options, version, required)


def registration(kind: str, name: str, factory: Callable, source: str, unavailable=None) -> Registration:
    """A factory checked as `register(name, factory, unavailable)` checks it, without registering it."""
    return _registration(kind, source, "unknown", (name, factory, unavailable), {})


def _short(value: Any) -> str:
    text = " ".join((getattr(value, "__qualname__", None) or repr(value)).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _qualname(factory: Callable) -> str:
    return getattr(factory, "__qualname__", type(factory).__name__)


def plugin_module_name(path: Path) -> str:
    """The module name of a plugin file: the same in every process (a tokenizer or model pickled in
    one process is found by another), and distinct for two files with the same name."""
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"b6lab_plugin_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def resolve_plugin_spec(spec: str, base_dir: str | Path | None = None) -> str:
    """A `plugins:` entry as loaded: a file becomes an absolute path (relative to `base_dir`, the
    config file's folder, else the working directory), so a Ray worker elsewhere finds it; a
    module name stays as it is."""
    if not _is_file(spec):
        return spec
    path = Path(spec).expanduser()
    if path.is_absolute():
        return str(path.resolve())
    bases = ([Path(base_dir)] if base_dir else []) + [Path.cwd()]
    return str(next((base / path for base in bases if (base / path).exists()), bases[0] / path).resolve())


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def load_plugin_path(spec: str, base_dir: str | Path | None = None) -> str:
    """Register a plugin named in a config's `plugins:` list: a .py file or an importable module.

    Relative file paths are taken from `base_dir` (the config file's folder) or the working
    directory. Returns the plugin's registered name; loading the same file twice is a no-op.
    """
    load_plugins()
    if not _is_file(spec):
        name = f"module:{spec}"
        if pm.get_plugin(name) is None:
            try:
                module = importlib.import_module(spec)
            except ImportError as exc:
                raise PluginError(f"plugin module {spec!r} cannot be imported: {exc}") from exc
            register_plugin(module, name, f"module {spec}", getattr(module, "__version__", "unknown"))
        return name
    path = Path(resolve_plugin_spec(spec, base_dir))
    name = f"file:{path}"
    if pm.get_plugin(name) is not None:
        return name
    if not path.is_file():
        raise PluginError(f"plugin file {spec} not found (looked for {path})")
    module_name = plugin_module_name(path)
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(f"plugin file {path} failed to load: {exception_line(exc)}") from exc
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    try:
        register_plugin(module, name, f"file {path}", f"sha256:{digest}")
    except BaseException:
        del sys.modules[module_name]
        raise
    return name


def registrations(kind: str) -> dict[str, Registration]:
    """Every registered part of `kind`, by name. A name registered twice is an error naming both."""
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}")
    load_plugins()
    if kind not in _by_kind:
        found: dict[str, Registration] = {}
        for loaded in _plugins.values():
            for reg in loaded.parts:
                if reg.kind != kind:
                    continue
                if reg.name in found:
                    raise PluginError(_registered_twice(found[reg.name], reg))
                found[reg.name] = reg
        _by_kind[kind] = found
    return _by_kind[kind]


def _registered_twice(first: Registration, second: Registration) -> str:
    message = f"{first.kind} plugin {first.name!r} is registered twice: by {first.source} and by {second.source}"
    sources = (first.source, second.source)
    file = next((s[len("file "):] for s in sources if s.startswith("file ")), None)
    package = next((s for s in sources if s.startswith("package ")), None)
    if file and package:
        dist = package.split()[1]
        return (f"{message}; the file is in the run's plugins: list while {dist} is installed too: to use the "
                f"package, drop {file} from plugins: (on resume: --set plugins=[]); to use the file, pip uninstall {dist}")
    return f"{message}; rename one of them, or load only one"


def get(kind: str, name: str) -> Registration:
    """The part of `kind` called `name`; an unknown name lists the known ones and the closest."""
    known = registrations(kind)
    if name in known:
        return known[name]
    raise PluginError(unknown(name, sorted(known), f"{kind} plugin"))


def source_changes(recorded: dict) -> list[str]:
    """How the parts a run was made with (its config.yaml's `run.plugins`) differ from what is
    registered now: another file or package, or another version of it. One line each."""
    notes = []
    for kind, was in (recorded or {}).items():
        now = registrations(kind).get(was.get("name")) if kind in KINDS else None
        if now is not None and (now.source, now.version) != (was.get("source"), was.get("version")):
            notes.append(f"{kind} plugin {now.name!r} comes from {now.source} ({now.version}), but the run was made "
                         f"with {was.get('source')} ({was.get('version')}): restore that one to continue exactly")
    return notes


def kinds_of(name: str) -> list[str]:
    """The kinds that have a part called `name` (most names belong to one kind)."""
    return [kind for kind in KINDS if name in registrations(kind)]
