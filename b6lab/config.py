"""The run config: plain nested dataclasses that validate themselves and pickle into a Ray worker.

A config is built in layers: the defaults below, then a preset (`--preset` or the file's
`preset:` key), then the YAML file, then each `--set section.key=value`. Plugin-specific keys
sit beside the plugin's name in its section (`optim: {name: sgd, momentum: 0.9}`); they are the
keyword-only arguments of the plugin's factory and are checked against its defaults' types.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from b6lab import registry
from b6lab.errors import ConfigError, UsageError
from b6lab.presets import GPU_DEFAULT, PRESETS


@dataclass
class ModelConfig:
    vocab_size: Optional[int] = None  # None: the tokenizer's, rounded up to a multiple of 64
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: Optional[int] = None  # None: 4 * d_model
    max_seq_len: int = 256
    dropout: float = 0.0
    bias: bool = False  # biases in the feed-forward layers
    attn_bias: bool = False  # biases in the attention projections
    softmax_scale: Optional[float] = None  # None: 1 / sqrt(head_dim)
    attention: str = "auto"
    norm: str = "pre"
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    gradient_checkpointing: bool = False
    options: dict = field(default_factory=dict)

    plugin_keys = {"attention": "attention", "norm": "norm"}

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    def validate(self) -> None:
        for key in ("d_model", "n_layers", "n_heads", "max_seq_len"):
            _positive(self, "model", key)
        if self.vocab_size is not None:
            _positive(self, "model", "vocab_size")
        if self.d_ff is not None:
            _positive(self, "model", "d_ff")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}", key="model.n_heads"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"head size d_model/n_heads = {self.head_dim} is odd; RoPE rotates pairs of dimensions",
                key="model.n_heads",
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}", key="model.dropout")


@dataclass
class DataConfig:
    source: str = "python-stdlib"
    tokenizer: str = "bpe"
    seq_len: Optional[int] = None  # None: model.max_seq_len
    val_fraction: float = 0.02
    shuffle_buffer: int = 256  # sequences shuffled together
    num_workers: int = 1  # DataLoader processes tokenizing ahead of the step
    prefetch_factor: int = 4
    doc_masking: bool = False  # attend only within a document (passes boundaries to attention)
    cache_dir: Optional[str] = None  # tokenizer cache; None: $B6LAB_CACHE or ~/.cache/b6lab
    options: dict = field(default_factory=dict)

    plugin_keys = {"source": "dataset", "tokenizer": "tokenizer"}

    def validate(self) -> None:
        if self.seq_len is not None:
            _positive(self, "data", "seq_len")
        _positive(self, "data", "shuffle_buffer")
        _positive(self, "data", "prefetch_factor")
        if self.num_workers < 0:
            raise ConfigError(f"must be >= 0, got {self.num_workers}", key="data.num_workers")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"must be in (0, 1), got {self.val_fraction}", key="data.val_fraction")


@dataclass
class OptimConfig:
    name: str = "lion"
    grad_clip: Optional[float] = 1.0  # max global grad norm; None or 0: no clipping
    decay_embeddings: bool = True  # weight decay on embedding matrices too (as nanoGPT)
    options: dict = field(default_factory=dict)  # lr, weight_decay, betas, ...: the optimizer's own

    plugin_keys = {"name": "optimizer"}

    def validate(self) -> None:
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ConfigError(f"must be >= 0, got {self.grad_clip}", key="optim.grad_clip")


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    options: dict = field(default_factory=dict)  # warmup_steps, min_lr_ratio, ...: the schedule's own

    plugin_keys = {"name": "scheduler"}

    def validate(self) -> None:
        pass


@dataclass
class TrainConfig:
    batch_size: int = 8  # sequences per micro-batch
    grad_accum_steps: int = 1
    max_steps: int = 400
    eval_interval: int = 100
    eval_steps: int = 10
    log_interval: int = 10
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool | Literal["auto"] = "auto"  # auto: on a GPU (off on a CPU, where it ran slower)
    seed: int = 0
    checkpoint_interval: Optional[int] = None  # None: at every eval
    adaptive_batch: bool = True  # on CUDA out-of-memory, halve the micro-batch, double accumulation
    out_dir: Optional[str] = None  # None: runs/<config name>
    threads: Optional[int] = None  # CPU threads for torch; None: torch's default

    def validate(self) -> None:
        for key in ("batch_size", "grad_accum_steps", "max_steps", "eval_interval", "eval_steps", "log_interval"):
            _positive(self, "train", key)
        if self.checkpoint_interval is not None:
            _positive(self, "train", "checkpoint_interval")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"must be auto, cpu, cuda or cuda:N, got {self.device!r}", key="train.device")


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "b6lab"
    entity: Optional[str] = None
    mode: Literal["online", "offline", "disabled"] = "online"
    name: Optional[str] = None  # None: the run folder's name
    log_checkpoint: bool = False  # upload checkpoints/best as an artifact at the end

    def validate(self) -> None:
        pass


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress: bool = True

    def validate(self) -> None:
        pass


@dataclass
class RunConfig:
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    plugins: list[str] = field(default_factory=list)  # plugin files/modules, as absolute paths once loaded

    @property
    def seq_len(self) -> int:
        return self.data.seq_len or self.model.max_seq_len

    def to_dict(self) -> dict:
        """Plain nested dict, plugin options back beside their plugin's name: what config.yaml holds."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = _section_to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
        return out

    def replace(self, **sections) -> "RunConfig":
        return dataclasses.replace(self, **sections)


SECTIONS = ("model", "data", "optim", "schedule", "train", "logging")
# Keys config.yaml carries for the record that a loaded config may hold and that are ignored.
RECORD_KEYS = ("run",)


def _positive(section_obj, section: str, key: str) -> None:
    value = getattr(section_obj, key)
    if value <= 0:
        raise ConfigError(f"must be a positive number, got {value}", key=f"{section}.{key}")


def _section_to_dict(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "options":
            out.update(copy.deepcopy(value))
        elif dataclasses.is_dataclass(value):
            out[f.name] = _section_to_dict(value)
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------
# Building a config from layers


class Layers:
    """A nested dict of config values plus where each leaf came from (for error messages)."""

    def __init__(self):
        self.values: dict = {}
        self.origin: dict[str, str] = {}
        self.builtin: set[str] = set()  # origins that are b6lab's own presets, not the user's words

    def merge(self, data: dict, origin: str, prefix: str = "", builtin: bool = False) -> None:
        if builtin:
            self.builtin.add(origin)
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping of keys, got {type(data).__name__}", file=origin)
        self._merge_into(self.values, data, origin, prefix)

    def _merge_into(self, target: dict, data: dict, origin: str, prefix: str) -> None:
        for key, value in data.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                self._merge_into(target[key], value, origin, f"{path}.")
            else:
                target[key] = copy.deepcopy(value)
                self.origin[path] = origin
                if isinstance(value, dict):
                    for sub in _leaf_paths(value, f"{path}."):
                        self.origin[sub] = origin

    def set(self, dotted: str, value: Any, origin: str) -> None:
        parts = dotted.split(".")
        node = {}
        cursor = node
        for part in parts[:-1]:
            cursor[part] = {}
            cursor = cursor[part]
        cursor[parts[-1]] = value
        self.merge(node, origin)

    def where(self, key: str) -> str | None:
        return self.origin.get(key)

    def from_preset(self, key: str) -> bool:
        return self.origin.get(key) in self.builtin


def _leaf_paths(data: dict, prefix: str):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaf_paths(value, f"{prefix}{key}.")
        yield f"{prefix}{key}"


def read_yaml(path: str | Path, kind: str = "config file", holds: str = "sections") -> dict:
    """The mapping a YAML file holds; a missing file, bad YAML or a non-mapping is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{kind} {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}".replace("\n", " "), file=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"a {kind} must hold a mapping of {holds}", file=str(path))
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` with the value parsed as YAML (`optim.betas=[0.9,0.99]`)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or key.startswith(".") or key.endswith("."):
        raise ConfigError(f"--set {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(
    path: str | Path | None = None,
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    data: dict | None = None,
) -> RunConfig:
    """Resolve defaults + preset + file (or `data`, already parsed) + `--set` overrides into a RunConfig."""
    layers = Layers()
    file_label = str(path) if path else "<config>"
    base_dir = Path(path).resolve().parent if path else Path.cwd()
    file_data = read_yaml(path) if path else copy.deepcopy(data or {})
    if not isinstance(file_data, dict):
        raise ConfigError("a config must be a mapping of sections", file=file_label)
    preset = preset or file_data.pop("preset", None)
    file_data.pop("preset", None)
    parsed_overrides = [parse_override(text) for text in overrides]

    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(_unknown(preset, PRESETS, "preset"), key="preset", file=file_label if path else None)
        layers.merge(PRESETS[preset], f"preset {preset}", builtin=True)
    elif not path and data is None and _gpu_expected(parsed_overrides):
        layers.merge(GPU_DEFAULT, "the GPU default", builtin=True)
    if path or data is not None:
        layers.merge(file_data, file_label)
    for key, value in parsed_overrides:
        layers.set(key, value, f"--set {key}")

    name = layers.values.get("name") or (Path(path).stem if path else preset) or "default"
    layers.values["name"] = name
    plugins = layers.values.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError("must be a list of plugin files or modules", key="plugins", file=layers.where("plugins"))
    resolved_plugins = []
    for spec in plugins:
        plugin_base = base_dir if layers.where("plugins") == file_label else Path.cwd()
        resolved_plugins.append(registry.resolve_plugin_spec(spec, plugin_base))
        registry.load_plugin_path(resolved_plugins[-1])
    layers.values["plugins"] = resolved_plugins
    return build_config(layers)


def _gpu_expected(overrides: list[tuple[str, Any]]) -> bool:
    """With no config at all, a GPU run starts from the bigger GPU default."""
    device = dict(overrides).get("train.device", "auto")
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def build_config(layers: Layers) -> RunConfig:
    values = layers.values
    for key in values:
        if key not in SECTIONS and key not in ("name", "plugins") + RECORD_KEYS:
            choices = list(SECTIONS) + ["name", "plugins", "preset"]
            raise ConfigError(_unknown(key, choices, "section"), key=key, file=layers.where(key))
    sections = {}
    hints = typing.get_type_hints(RunConfig)
    for section in SECTIONS:
        cls = hints[section]
        raw = values.get(section) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"must be a mapping of keys, got {raw!r}", key=section, file=layers.where(section))
        sections[section] = _build_section(cls, raw, section, layers)
    if not isinstance(values["name"], str):
        raise ConfigError("must be a string", key="name", file=layers.where("name"))
    cfg = RunConfig(name=values["name"], plugins=values["plugins"], **sections)
    _validate_whole(cfg, layers)
    return cfg


def _build_section(cls, raw: dict, prefix: str, layers: Layers):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "options"}
    kwargs, extra = {}, {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}"
        if key in fields:
            if dataclasses.is_dataclass(hints[key]):
                if not isinstance(value, dict):
                    raise ConfigError(f"must be a mapping, got {value!r}", key=dotted, file=layers.where(dotted))
                kwargs[key] = _build_section(hints[key], value, dotted, layers)
            else:
                kwargs[key] = _check_type(value, hints[key], dotted, layers.where(dotted))
        else:
            extra[key] = value
    plugin_keys = getattr(cls, "plugin_keys", {})
    if extra and not plugin_keys:
        key = next(iter(extra))
        raise ConfigError(
            _unknown(key, list(fields), f"{prefix} key"), key=f"{prefix}.{key}", file=layers.where(f"{prefix}.{key}")
        )
    obj = cls(**kwargs)
    if plugin_keys:
        obj.options = _plugin_options(obj, plugin_keys, extra, fields, prefix, layers)
    try:
        obj.validate()
    except ConfigError as exc:
        raise exc.located(layers.where(exc.key or "")) from None
    return obj


def _plugin_options(obj, plugin_keys: dict, extra: dict, fields: dict, prefix: str, layers: Layers) -> dict:
    """Check the keys beside each plugin's name against that plugin's factory; fill in defaults."""
    options: dict[str, Any] = {}
    declared: dict[str, tuple[str, Any]] = {}
    for key, kind in plugin_keys.items():
        name = getattr(obj, key)
        dotted = f"{prefix}.{key}"
        try:
            reg = registry.get(kind, name)
        except UsageError as exc:
            raise ConfigError(str(exc), key=dotted, file=layers.where(dotted)) from None
        for option, default in reg.options.items():
            declared.setdefault(option, (name, default))
            options.setdefault(option, copy.deepcopy(default))
        hints = _factory_hints(reg.factory)
        for option in reg.options:
            if option in extra:
                where = f"{prefix}.{option}"
                options[option] = _check_type(extra[option], hints.get(option, _type_of(reg.options[option])), where, layers.where(where))
    for key in extra:
        # A preset's option for the plugin it names (data.bpe_vocab_size beside tokenizer: bpe) is
        # dropped when the user picks another plugin; the user's own stray keys are errors.
        if key not in declared and not layers.from_preset(f"{prefix}.{key}"):
            plugins = ", ".join(f"{k}={getattr(obj, k)}" for k in plugin_keys)
            known = sorted(list(fields) + list(declared))
            raise ConfigError(
                _unknown(key, known, f"{prefix} key") + f" (plugins in this section: {plugins})",
                key=f"{prefix}.{key}",
                file=layers.where(f"{prefix}.{key}"),
            )
    return options


def _factory_hints(factory) -> dict:
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:
        return {}


def _type_of(default):
    if default is None:
        return Any
    if isinstance(default, tuple):
        return tuple[tuple(type(v) for v in default)]
    return type(default)


def _validate_whole(cfg: RunConfig, layers: Layers) -> None:
    if cfg.data.seq_len is not None and cfg.data.seq_len > cfg.model.max_seq_len:
        raise ConfigError(
            f"seq_len={cfg.data.seq_len} is longer than model.max_seq_len={cfg.model.max_seq_len}",
            key="data.seq_len",
            file=layers.where("data.seq_len"),
        )
    if cfg.train.eval_interval > cfg.train.max_steps and layers.where("train.eval_interval"):
        pass  # a run shorter than one eval interval still evaluates at its end


def _unknown(value, choices, what: str) -> str:
    closest = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f"; did you mean {closest[0]!r}?" if closest else "."
    return f"unknown {what} {value!r}{hint} Known: {', '.join(str(c) for c in choices)}"


# ---------------------------------------------------------------------------------------------
# Type checking of config values


def _check_type(value, annotation, key: str, origin: str | None):
    try:
        return _coerce(value, annotation)
    except (TypeError, ValueError):
        expected = _type_name(annotation)
        raise ConfigError(f"expected {expected}, got {value!r}", key=key, file=origin) from None


def _coerce(value, annotation):
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise TypeError
    if origin is Literal:
        if value in args:
            return value
        raise ValueError
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return float(value)  # YAML reads 3e-4 (no dot) as a string
        raise TypeError
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item) for v in value]
        return tuple(items) if (origin or annotation) is tuple else items
    if origin is dict or annotation is dict:
        if isinstance(value, dict):
            return value
        raise TypeError
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise TypeError
    return value


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        names = []
        for arg in args:
            if typing.get_origin(arg) is Literal:
                names += [repr(choice) for choice in typing.get_args(arg)]
            else:
                names += ["true", "false"] if arg is bool else ["null"] if arg is type(None) else [_type_name(arg)]
        return ", ".join(names[:-1]) + " or " + names[-1]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and args:
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    if origin in (list, tuple):
        return "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


# ---------------------------------------------------------------------------------------------
# Writing and reading a resolved config


def dump_config(cfg: RunConfig, path: str | Path, record: dict | None = None) -> None:
    """Write the resolved config as YAML; `record` (versions, auto choices) goes under `run:`."""
    data = cfg.to_dict()
    if record:
        data["run"] = record
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def config_from_dict(data: dict) -> RunConfig:
    """Rebuild a RunConfig from `to_dict()` output (e.g. inside a Ray worker or from config.yaml)."""
    data = {k: v for k, v in data.items() if k not in RECORD_KEYS}
    return load_config(data=data)
