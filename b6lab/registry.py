"""The plugin manager: where b6lab finds its parts, and how it looks one up by name.

Plugins come from three places, in this order: the built-ins in `b6lab/plugins/`, installed
packages with an entry point in the group "b6lab", and Python files or modules a config names
in its `plugins:` list. Each plugin's hooks call `register(name, factory, unavailable=None)`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy

import b6lab
from b6lab import hookspecs
from b6lab.errors import PluginError, unknown

KINDS = ("attention", "norm", "optimizer", "scheduler", "dataset", "tokenizer")

BUILTIN_PLUGINS = (
    "b6lab.plugins.attention",
    "b6lab.plugins.norms",
    "b6lab.plugins.optimizers",
    "b6lab.plugins.schedulers",
    "b6lab.plugins.datasets",
    "b6lab.plugins.corpora",
    "b6lab.plugins.tokenizers",
)

pm = pluggy.PluginManager("b6lab")
pm.add_hookspecs(hookspecs)

# Where each registered plugin came from, and its version, by pluggy plugin name: for messages,
# `b6lab plugins`, and the record in each run's config.yaml.
_origins: dict[str, tuple[str, str]] = {}  # name -> (source, version)
_loaded = False


@dataclass(frozen=True)
class Registration:
    """One registered part: its kind and name, how to build it, and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    source: str
    unavailable: Callable[..., str | None] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    version: str = "unknown"

    def why_unavailable(self, **context) -> str | None:
        """None if this part can run in `context` (device, dtype, head_dim), else the reason."""
        return self.unavailable(**context) if self.unavailable else None

    def build(self, *args, **options):
        return self.factory(*args, **options)

    @property
    def description(self) -> str:
        """The first paragraph of the factory's docstring, on one line."""
        doc = inspect.getdoc(self.factory) or ""
        return " ".join(doc.split("\n\n")[0].split())


def plugin_options(factory: Callable) -> dict[str, Any]:
    """A factory's own config keys: its keyword-only arguments, with their defaults."""
    options = {}
    for param in inspect.signature(factory).parameters.values():
        if param.kind is param.KEYWORD_ONLY:
            options[param.name] = None if param.default is param.empty else param.default
    return options


def load_plugins() -> None:
    """Register the built-ins and the installed entry-point plugins (once per process).

    Set B6LAB_LOAD_ENTRYPOINTS=0 to skip installed packages (the tests do, so what happens to
    be installed on a machine cannot change their results).
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        if not pm.is_registered(module):
            register_plugin(module, module_name, f"built-in ({module_name})", b6lab.__version__)
    if os.environ.get("B6LAB_LOAD_ENTRYPOINTS", "1") != "0":
        before = {name for name, _ in pm.list_name_plugin()}
        pm.load_setuptools_entrypoints("b6lab")
        dists = {pm.get_name(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
        for name, _ in pm.list_name_plugin():
            if name not in before:
                dist = dists.get(name)
                where = f"{dist.metadata['name']} {dist.version}" if dist else "installed package"
                _origins[name] = (f"package {where} (entry point {name})", dist.version if dist else "unknown")


def register_plugin(plugin: object, name: str, source: str, version: str = "unknown") -> None:
    """Register a plugin object (a module or instance with hooks) under `name`."""
    pm.register(plugin, name=name)
    _origins[name] = (source, version)


def unregister_plugin(name: str) -> None:
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    _origins.pop(name, None)


def load_plugin_path(spec: str, base_dir: str | Path | None = None) -> str:
    """Register a plugin named in a config's `plugins:` list: a .py file or an importable module.

    Relative file paths are taken from `base_dir` (the config file's folder) or the working
    directory. Returns the plugin's registered name; loading the same file twice is a no-op.
    """
    load_plugins()
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = Path(spec).expanduser()
        if not path.is_absolute():
            candidates = [Path(base_dir) / path] if base_dir else []
            candidates.append(Path.cwd() / path)
            path = next((c for c in candidates if c.exists()), candidates[0])
        path = path.resolve()
        name = f"file:{path}"
        if pm.get_plugin(name) is not None:
            return name
        if not path.is_file():
            raise PluginError(f"plugin file {spec} not found (looked for {path})")
        module_name = f"b6lab_user_plugin_{abs(hash(str(path)))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise PluginError(f"plugin file {path} failed to load: {type(exc).__name__}: {exc}") from exc
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        register_plugin(module, name, f"file {path}", f"sha256:{digest}")
        return name
    name = f"module:{spec}"
    if pm.get_plugin(name) is None:
        try:
            module = importlib.import_module(spec)
        except ImportError as exc:
            raise PluginError(f"plugin module {spec!r} cannot be imported: {exc}") from exc
        register_plugin(module, name, f"module {spec}", getattr(module, "__version__", "unknown"))
    return name


def registrations(kind: str) -> dict[str, Registration]:
    """Every registered part of `kind`, by name. A name registered twice is an error naming both."""
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}")
    load_plugins()
    found: dict[str, Registration] = {}
    hook = getattr(pm.hook, f"b6lab_register_{kind}")
    # Call each implementation on its own, so every name is tied to the plugin that made it.
    for impl in reversed(hook.get_hookimpls()):
        source, version = _origins.get(impl.plugin_name, (impl.plugin_name, "unknown"))

        def register(name, factory, unavailable=None, _source=source, _version=version):
            if name in found:
                raise PluginError(
                    f"{kind} plugin {name!r} is registered twice: by {found[name].source} and by {_source}"
                )
            found[name] = Registration(kind, name, factory, _source, unavailable, plugin_options(factory), _version)

        impl.function(register=register)
    return found


def get(kind: str, name: str) -> Registration:
    """The part of `kind` called `name`; an unknown name lists the known ones and the closest."""
    known = registrations(kind)
    if name in known:
        return known[name]
    raise PluginError(unknown(name, sorted(known), f"{kind} plugin"))
