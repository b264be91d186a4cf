"""Where a config's values come from: presets, YAML files and overrides (`--set section.key=value`,
or a mapping of dotted keys to values), merged in layers that remember which file (or `--set`, or
preset) each key came from, for the messages."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from b6lab.errors import ConfigError, UsageError


class Layers:
    """A nested dict of config values plus where each leaf came from (for error messages)."""

    def __init__(self):
        self.values: dict = {}
        self.origin: dict[str, str] = {}  # dotted key -> "preset tiny", a file, "--set model.norm"
        self.builtin: set[str] = set()  # origins that are b6lab's own presets, not the user's words

    def merge(self, data: dict, origin: str, builtin: bool = False) -> None:
        if builtin:
            self.builtin.add(origin)
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping of keys, got {type(data).__name__}", file=origin)
        self._merge_into(self.values, data, origin, "")

    def _merge_into(self, target: dict, data: dict, origin: str, prefix: str) -> None:
        for key, value in data.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                self._merge_into(target[key], value, origin, f"{path}.")
            else:
                target[key] = copy.deepcopy(value)
                self.origin |= {sub: origin for sub in _paths(value, path)}

    def where(self, key: str) -> str | None:
        return self.origin.get(key)


def _paths(value, path: str):
    yield path
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _paths(sub, f"{path}.{key}")


def flatten(config: dict, prefix: str = "") -> dict:
    """A nested config as {dotted key: leaf value}: {"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_yaml(path: str | Path, kind: str = "config file", holds: str = "sections") -> dict:
    """The mapping a YAML file holds; a missing file, bad YAML or a non-mapping is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{kind} {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"not valid YAML{where}: {problem}", file=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"a {kind} must hold a mapping of {holds}", file=str(path))
    return data


def override_pairs(overrides: Mapping[str, Any] | Sequence[str]) -> list[tuple[str, Any]]:
    """(dotted key, value) for each override: a mapping's items as they are, or `--set` texts parsed."""
    if not isinstance(overrides, Mapping):
        return [parse_override(text) for text in overrides]
    for key in overrides:
        if not isinstance(key, str) or not _is_dotted(key):
            raise ConfigError(f"an override's key must be a dotted config key like optim.lr, got {key!r}")
    return list(overrides.items())


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` with the value parsed as YAML (`optim.betas=[0.9,0.99]`)."""
    key, _, raw = text.partition("=")
    key = key.strip()
    if not _ or not _is_dotted(key):
        raise ConfigError(f"--set {text!r} must look like section.key=value")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return key, raw


def _is_dotted(key: str) -> bool:
    return bool(key) and not key.startswith(".") and not key.endswith(".")
