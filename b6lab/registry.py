"""The plugin manager: where b6lab finds its parts, and how it looks one up by name.

Plugins come from three places, in this order: the built-ins in `b6lab/plugins/`, installed
packages with an entry point in the group "b6lab" (pluggy's `load_setuptools_entrypoints`), and
Python files or modules a config names in its `plugins:` list. Each plugin's hooks call
`register(name, factory, unavailable=None)`.

A plugin's hooks run once, when it is loaded: every mistake in them (an unknown hook name, a
bad `register` call, a factory that cannot take its kind's arguments: b6lab/registration.py) is
an error naming the plugin's file or package right then. What they registered is kept until a
plugin comes or goes.
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
from pathlib import Path
from typing import Callable

import pluggy

import b6lab
from b6lab import hookspecs
from b6lab.errors import PluginError, UsageError, exception_line, unknown
from b6lab.registration import Registration, factory_arguments, from_register_call, registration  # noqa: F401

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
        # As pytest does for pytest_* hooks: a function named b6lab_* is a hook, with or without
        # @b6lab.hookimpl (a plugin author who forgets it still gets their hook), and one that
        # names no hook is left for check_pending() to report (a misspelling).
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("b6lab_") and inspect.isfunction(inspect.getattr_static(plugin, name, None)):
            return {}
        return opts


pm = _PluginManager("b6lab")
pm.add_hookspecs(hookspecs)


# Where each registered plugin came from and what it registered, by pluggy plugin name, in order.
_plugins: dict[str, tuple[str, list[Registration]]] = {}
_by_kind: dict[str, dict[str, Registration]] = {}  # the merged view, rebuilt after a plugin comes or goes
_loaded_entry_points = False


def load_plugins() -> None:
    """Register the built-ins (again, if a test unregistered them) and, once per process, the
    installed entry-point plugins.

    Set B6LAB_LOAD_ENTRYPOINTS=0 to skip installed packages (the tests do, so what happens to
    be installed on a machine cannot change their results).
    """
    global _loaded_entry_points
    for module_name in BUILTIN_PLUGINS:
        if pm.get_plugin(module_name) is None:
            register_plugin(importlib.import_module(module_name), module_name, f"built-in ({module_name})",
                            b6lab.__version__)
    if _loaded_entry_points or os.environ.get("B6LAB_LOAD_ENTRYPOINTS", "1") == "0":
        return
    _loaded_entry_points = True
    try:
        pm.load_setuptools_entrypoints("b6lab")
        pm.check_pending()
    except Exception as exc:
        # pluggy loads them in order: the first not (fully) registered is the one that failed.
        refused = getattr(exc, "plugin", None)
        failed = next((ep for ep in importlib.metadata.entry_points(group="b6lab")
                       if pm.get_plugin(ep.name) in (None, refused)), None)
        where = _package(failed.name, failed.dist) if failed else "an installed package"
        if refused is None:
            raise PluginError(f"{where} failed to load: {exception_line(exc)}") from exc
        message = _validation_message(exc)
        pm.unregister(refused)
        raise PluginError(f"{where}: {message}") from exc
    for plugin, dist in pm.list_plugin_distinfo():
        name = pm.get_name(plugin)
        if name not in _plugins:
            _added(plugin, name, _package(name, dist), dist.version)


def _package(entry_point: str, dist) -> str:
    where = f"package {dist.metadata['name']} {dist.version}" if dist else "an installed package"
    return f"{where} (entry point {entry_point})"


def register_plugin(plugin: object, name: str, source: str, version: str = "unknown") -> None:
    """Register a plugin object (a module or instance with hooks) under `name`, and run its hooks.

    A mistake in the plugin is an error naming `source`; the plugin is then not registered.
    """
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        message = _validation_message(exc)
        unregister_plugin(name)  # pluggy leaves a plugin it refused half registered
        raise PluginError(f"{source}: {message}") from exc
    _added(plugin, name, source, version)


def _added(plugin: object, name: str, source: str, version: str) -> None:
    """Check a plugin pluggy has just registered and run its hooks; on a mistake, unregister it."""
    _plugins[name] = (source, [])
    _by_kind.clear()
    try:
        pm.check_pending()  # a b6lab_* function that is no hook: a misspelling, as pytest says for pytest_*
        for caller in pm.get_hookcallers(plugin) or []:
            _check_marker(caller.name, inspect.getattr_static(plugin, caller.name, None), source)
        _plugins[name] = (source, _run_hooks(name, source, version))
    except pluggy.PluginValidationError as exc:
        message = _validation_message(exc)
        unregister_plugin(name)
        raise PluginError(f"{source}: {message}") from None
    except BaseException:
        unregister_plugin(name)
        raise
    if not _plugins[name][1] and not name.startswith("b6lab.plugins."):
        warnings.warn(f"plugin {source} registers nothing: it has no hook that calls register(name, factory) "
                      f"(hooks: {', '.join(HOOKS)})", PluginWarning, stacklevel=3)


def _check_marker(hook: str, function: Callable, source: str) -> None:
    """A hook marked by another project's HookimplMarker only (llm's, say) was meant for b6lab."""
    others = [mark[: -len("_impl")] for mark in getattr(function, "__dict__", {}) if mark.endswith("_impl")]
    if others and "b6lab" not in others:
        raise PluginError(f"{source}: {hook} is marked by HookimplMarker({others[0]!r}), another project's; "
                          "decorate it with @b6lab.hookimpl")


def _validation_message(exc: pluggy.PluginValidationError) -> str:
    """pluggy's message is several lines about hookspecs; say which hook is unknown or misdeclared."""
    for caller in pm.get_hookcallers(exc.plugin) or []:
        if not caller.has_spec():
            return unknown(caller.name, list(HOOKS), "b6lab hook")
    for hook in HOOKS:
        function = getattr(exc.plugin, hook, None)
        if function is not None and list(inspect.signature(function).parameters) != ["register"]:
            return _hook_arguments(hook, function)
    return exception_line(exc)


def _hook_arguments(hook: str, function: Callable) -> str:
    return f"{hook}{inspect.signature(function)} must take one argument called `register`: def {hook}(register)"


def unregister_plugin(name: str) -> None:
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    _plugins.pop(name, None)
    _by_kind.clear()


def parts_of(plugin_name: str) -> list[Registration]:
    """What the plugin registered under `plugin_name` (as load_plugin_path returns it) registered."""
    return list(_plugins[plugin_name][1])


def forget_config_plugins() -> None:
    """Unregister every plugin a config's `plugins:` list loaded (files and modules), keeping the
    built-ins, the entry points and plugins registered by hand: a Python API call then sees
    exactly the plugins its own config names, not those of the call before it."""
    for name in [name for name in _plugins if name.startswith(("file:", "module:"))]:
        unregister_plugin(name)


def _run_hooks(plugin_name: str, source: str, version: str) -> list[Registration]:
    """Call each of the plugin's hooks with a `register` that checks every call."""
    parts: list[Registration] = []
    for hook_name, kind in HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            if tuple(impl.argnames) != ("register",):  # pluggy accepts a hook that takes no argument
                raise PluginError(f"{source}: {_hook_arguments(hook_name, impl.function)}")

            def register(*args, _kind=kind, **kwargs):
                parts.append(from_register_call(_kind, source, version, args, kwargs))

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
    try:
        register_plugin(module, name, f"file {path}", f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}")
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
        for reg in (reg for _, parts in _plugins.values() for reg in parts if reg.kind == kind):
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
