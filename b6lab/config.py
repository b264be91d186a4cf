"""The run config: plain nested dataclasses that validate themselves and pickle into a Ray worker.

A config is built in layers (config_sources.py): the defaults below, a preset (`--preset` or the
file's `preset:` key), the YAML file, the overrides (each `--set section.key=value`, or a mapping
of dotted keys to values: `b6lab.train`'s, a sweep trial's grid point). Keys beside a plugin's name
(`optim: {name: sgd, momentum: 0.9}`) are the keyword-only arguments of the plugin's factory.

Types and ranges are checked, and values coerced, by pydantic (v2, via validation.py): already
installed (wandb needs it), it validates standard-library dataclasses as they are, so the config
stays plain data that pickles, and its errors name their exact place, which the one-line messages
need. A section's validate() checks what relates its keys.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, Sequence, Union

import yaml

from b6lab import registry, validation
from b6lab.config_sources import Layers, override_pairs, parse_override, read_yaml  # noqa: F401 (the commands' imports)
from b6lab.errors import ConfigError, unknown
from b6lab.presets import GPU_DEFAULT, PRESETS
from b6lab.validation import NOT_NEGATIVE, POSITIVE, within

PositiveInt = Annotated[int, POSITIVE]


@dataclass
class ModelConfig:
    vocab_size: Optional[PositiveInt] = None  # None: the tokenizer's, rounded up to a multiple of 64
    d_model: PositiveInt = 256
    n_layers: PositiveInt = 4
    n_heads: PositiveInt = 4
    d_ff: Optional[PositiveInt] = None  # None: 4 * d_model
    max_seq_len: PositiveInt = 256
    dropout: Annotated[float, within(lambda p: 0 <= p < 1, "in [0, 1)")] = 0.0
    bias: bool = False  # biases in the feed-forward layers
    attn_bias: bool = False  # biases in the attention projections
    softmax_scale: Optional[float] = None  # None: 1 / sqrt(head_dim)
    attention: str = "auto"
    norm: str = "pre"  # norm placement (a plugin): where the norms go
    norm_layer: Literal["layernorm", "layernorm-nobias", "rmsnorm"] = "layernorm"  # which norm, everywhere
    feedforward: str = "gelu"  # a plugin: gelu | swiglu | relu2 | ...
    init: str = "gpt2"  # a plugin: the weights' starting values, gpt2 | xavier | ...
    parametrization: str = "standard"  # a plugin: how init, logits and lrs scale with width, standard | mup
    n_kv_heads: Optional[PositiveInt] = None  # None: n_heads (multi-head); fewer: grouped-query; 1: multi-query
    qk_norm: bool = False  # normalise each head's queries and keys (with norm_layer) before RoPE
    logit_softcap: Optional[Annotated[float, POSITIVE]] = None  # None: off; c: logits = c * tanh(logits / c) (Gemma 2)
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    gradient_checkpointing: bool = False
    options: dict = field(default_factory=dict)

    plugin_keys = {"attention": "attention", "norm": "norm", "feedforward": "feedforward", "init": "init",
                   "parametrization": "parametrization"}

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}", key="model.n_heads"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"head size d_model/n_heads = {self.head_dim} is odd; RoPE rotates pairs of dimensions",
                key="model.n_heads",
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (each key/value head serves "
                "a group of query heads); leave it unset for multi-head attention",
                key="model.n_kv_heads",
            )


@dataclass
class DataConfig:
    source: str = "python-stdlib"
    tokenizer: str = "bpe"
    seq_len: Optional[PositiveInt] = None  # None: model.max_seq_len
    val_fraction: Annotated[float, within(lambda f: 0 < f < 1, "in (0, 1)")] = 0.02
    shuffle_buffer: PositiveInt = 256  # sequences shuffled together
    num_workers: Annotated[int, NOT_NEGATIVE] = 1  # DataLoader processes tokenizing ahead of the step
    prefetch_factor: PositiveInt = 4
    doc_masking: bool = False  # attend only within a document (passes boundaries to attention)
    cache_dir: Optional[str] = None  # tokenizer cache; None: $B6LAB_CACHE, $XDG_CACHE_HOME/b6lab or ~/.cache/b6lab
    options: dict = field(default_factory=dict)

    plugin_keys = {"source": "dataset", "tokenizer": "tokenizer"}


@dataclass
class OptimConfig:
    name: str = "lion"
    grad_clip: Optional[Annotated[float, NOT_NEGATIVE]] = 1.0  # max global grad norm; None or 0: no clipping
    decay_embeddings: bool = True  # weight decay on embedding matrices too (as nanoGPT)
    options: dict = field(default_factory=dict)  # lr, weight_decay, betas, ...: the optimizer's own

    plugin_keys = {"name": "optimizer"}


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    options: dict = field(default_factory=dict)  # warmup_steps, min_lr_ratio, ...: the schedule's own

    plugin_keys = {"name": "scheduler"}


@dataclass
class TrainConfig:
    batch_size: PositiveInt = 8  # sequences per micro-batch
    grad_accum_steps: PositiveInt = 1
    max_steps: PositiveInt = 400
    eval_interval: PositiveInt = 100
    eval_steps: PositiveInt = 10
    log_interval: PositiveInt = 10
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool | Literal["auto"] = "auto"  # auto: on a GPU (off on a CPU, where it ran slower)
    seed: int = 0
    checkpoint_interval: Optional[PositiveInt] = None  # None: at every eval
    adaptive_batch: bool = True  # on CUDA out-of-memory, halve the micro-batch, double accumulation
    out_dir: Optional[str] = None  # None: runs/<config name>
    # CPU threads for torch: auto (from the cores this process may use, how busy they are and the
    # model's size: train/hardware.py), a number, or None for torch's own default
    threads: Union[Literal["auto"], PositiveInt, None] = "auto"
    z_loss: Annotated[float, within(lambda z: z >= 0, ">= 0 (0 turns it off)", ">= 0")] = 0.0  # coefficient of the mean squared log-partition added to the loss (PaLM: 1e-4)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: DDP replicas, or FSDP2 shards per block

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"must be auto, cpu, cuda or cuda:N, got {self.device!r}", key="train.device")


@dataclass
class WandbConfig:
    enabled: bool = False
    # None: wandb's own resolution (WANDB_PROJECT / WANDB_ENTITY / WANDB_MODE, then its settings);
    # the project then falls back to "b6lab".
    project: Optional[str] = None
    entity: Optional[str] = None
    mode: Optional[Literal["online", "offline", "disabled"]] = None
    name: Optional[str] = None  # None: the run folder's name
    log_checkpoint: bool = False  # upload checkpoints/best as an artifact at the end


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tensorboard: bool = False  # event files in <run folder>/tensorboard (tensorboardX)
    progress: bool = True  # a bar on a terminal; plain lines when stdout is redirected
    plain_interval_seconds: Annotated[float, NOT_NEGATIVE] = 30.0  # redirected: a line per log_interval, at most one this often
    quiet: bool = False  # only the start line, warnings and the result (`b6lab train --quiet`)


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
        out = dataclasses.asdict(self)
        for section in SECTIONS:
            out[section] |= out[section].pop("options", {})
        return out


SECTIONS = ("model", "data", "optim", "schedule", "train", "logging")


def plugin_choices(cfg: RunConfig) -> list[tuple[str, str, str]]:
    """Every plugin a run chooses, as (config key, kind, name): ("model.norm", "norm", "pre"), ...
    The one list of them, read from each section's `plugin_keys`, so a new kind is nowhere forgotten.
    A key and its kind may differ (schedule.name: scheduler, data.source: dataset): DESIGN.md fixes
    both, the kind naming the plugin and the key the choice (docs/architecture.md, "Names")."""
    return [(f"{section}.{key}", kind, getattr(getattr(cfg, section), key))
            for section in SECTIONS for key, kind in getattr(getattr(cfg, section), "plugin_keys", {}).items()]


# Keys config.yaml carries for the record that a loaded config may hold and that are ignored.
RECORD_KEYS = ("run",)


# ---------------------------------------------------------------------------------------------
# Building a config from layers (config_sources.py) checked by pydantic (validation.py)


def load_config(
    path: str | Path | None = None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    data: dict | None = None,
    origin: Callable[[str], str] = lambda key: f"--set {key}",
) -> RunConfig:
    """Resolve defaults + preset + file (or `data`, already parsed) + overrides into a RunConfig.

    `overrides` maps dotted keys to values as they are (`{"optim.betas": [0.9, 0.99]}`), or is the
    command line's `--set` texts (`"optim.betas=[0.9,0.99]"`, each value read as YAML). A mistake in
    an override names where it came from as `origin(key)` says: `--set optim.betas` unless told
    otherwise (a sweep's trial names the part of its sweep file)."""
    layers = Layers()
    file_label = str(path) if path else "<config>"
    file_data = read_yaml(path) if path else copy.deepcopy(data or {})
    file_preset = file_data.pop("preset", None)
    preset = preset or file_preset
    pairs = override_pairs(overrides)

    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(unknown(preset, PRESETS, "preset"), key="preset", file=file_label if path else None)
        layers.merge(PRESETS[preset], f"preset {preset}", builtin=True)
    elif not path and data is None and _gpu_expected(pairs):
        layers.merge(GPU_DEFAULT, "the GPU default", builtin=True)
    if path or data is not None:
        layers.merge(file_data, file_label)
    for key, value in pairs:
        layers.merge(functools.reduce(lambda inner, part: {part: inner}, reversed(key.split(".")), value), origin(key))

    layers.values["name"] = layers.values.get("name") or (Path(path).stem if path else preset) or "default"
    plugins = layers.values.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError("must be a list of plugin files or modules", key="plugins", file=layers.where("plugins"))
    # Relative to the config file when the file names them, else to the working directory.
    plugin_base = Path(path).resolve().parent if path and layers.where("plugins") == file_label else Path.cwd()
    layers.values["plugins"] = [registry.resolve_plugin_spec(spec, plugin_base) for spec in plugins]
    for spec in layers.values["plugins"]:
        registry.load_plugin_path(spec)
    return build_config(layers)


def _gpu_expected(overrides: list[tuple[str, Any]]) -> bool:
    """With no config at all, a GPU run starts from the bigger GPU default."""
    if dict(overrides).get("train.device", "auto") == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def build_config(layers: Layers) -> RunConfig:
    """Type-check every key and range (pydantic), then each plugin's options, then what relates keys."""
    for key in RECORD_KEYS:
        layers.values.pop(key, None)
    extras: dict[str, dict] = {}
    known = validation.known_keys(RunConfig, layers.values, "", layers, extras)
    cfg = validation.build(RunConfig, known, layers.where)
    for section in SECTIONS:
        obj = getattr(cfg, section)
        if hasattr(obj, "plugin_keys"):
            obj.options = validation.plugin_options(obj, extras.get(section, {}), section, layers)
        try:
            getattr(obj, "validate", lambda: None)()
        except ConfigError as exc:
            raise exc.located(layers.where(exc.key or "")) from None
    if cfg.data.seq_len is not None and cfg.data.seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"seq_len={cfg.data.seq_len} is longer than model.max_seq_len={cfg.model.max_seq_len}",
                          key="data.seq_len", file=layers.where("data.seq_len"))
    return cfg


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
    return load_config(data=data)
