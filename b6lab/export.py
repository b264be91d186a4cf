"""Writing a checkpoint in other formats: `hf` (a folder transformers' Auto classes load) and
`safetensors` (the weights and config alone).

hf: the plain Pre-LN B6 (LayerNorm, GELU, multi-head attention, the default softmax scale)
becomes a GPT-NeoX (the same math, hf/neox.py), which every transformers install loads with no
extra code. Every other built-in choice (post, sandwich, peri, deepnorm; RMSNorm; SwiGLU, squared
ReLU; grouped-query attention, QK-norm, logit soft-capping, a softmax scale of its own) becomes
`B6ForCausalLM` (model_type "b6", hf/modeling_b6.py), written into the folder as
trust_remote_code files: the folder then loads
wherever transformers does, without b6lab installed (lm-eval's `hf` model, a colleague's
notebook), at the price of `trust_remote_code=True`. A b6lab import that registered the classes
would load without that flag but only where b6lab is installed. Either way the export checks its
own work before writing: the converted model's logits must match b6lab's.

Anything the `hf` format cannot express (a plugin or option it does not know) is refused with
one line naming it, so that a new model option fails safe; `safetensors` writes any model.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import torch
import yaml

from b6lab.errors import UsageError
from b6lab.generate import checkpoint_folder, load_for_sampling
from b6lab.train import checkpoint

FORMATS = ("hf", "safetensors")

# Attention backends that all compute softmax(q k^T * scale) v with a causal mask: any of them exports.
EXACT_ATTENTION = ("auto", "eager", "sdpa", "flash-v1", "flash-v2", "flash-v3", "flash-v4", "flex")
# What hf/modeling_b6.py restates: the built-in norm placements, norm layers and feed-forwards.
PLACEMENTS = ("pre", "post", "sandwich", "peri", "deepnorm")
NORM_LAYERS = ("layernorm", "layernorm-nobias", "rmsnorm")
FEEDFORWARDS = ("gelu", "swiglu", "relu2")
# model.* keys the exported model expresses, or that change nothing it computes: sdpa_kernel picks
# a kernel for the same math; ff_match_dense and ff_multiple_of only size SwiGLU, which the weights show.
EXPRESSED_KEYS = {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len", "dropout", "bias",
                  "attn_bias", "softmax_scale", "rope_theta", "tie_embeddings", "gradient_checkpointing", "attention",
                  "norm", "norm_layer", "feedforward", "qk_norm", "logit_softcap", "sdpa_kernel", "ff_match_dense",
                  "ff_multiple_of", "init", "parametrization"}  # init: the weights' starting values, a training-time choice
MAX_LOGIT_DIFFERENCE = 1e-4


def export(path: str | Path, out: str | Path, fmt: str) -> str:
    """Write the checkpoint at `path` into the folder `out` in format `fmt`; returns what was written."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    folder = checkpoint_folder(path)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; export into a new folder")
    if fmt == "safetensors":
        return _write_safetensors(folder, config, out)
    architecture = hf_architecture(config)  # refuses before any weight is read
    return _write_hf(folder, config, out, architecture)


def hf_architecture(config: dict) -> str:
    """"gpt_neox" or "b6": the transformers architecture that computes what this B6 computes;
    a plugin or option that neither can express is an error naming it."""
    model, plugins = config["model"], config.get("run", {}).get("plugins", {})

    def refuse(kind: str, name: str) -> UsageError:
        recorded = plugins.get(kind, {})
        origin = f" (from {recorded['source']})" if recorded.get("name") == name and recorded.get("source") else ""
        return UsageError(f"{kind} plugin {name!r}{origin} has no Hugging Face form that --format hf can write; "
                          "--format safetensors writes the weights of any model")

    if model["attention"] not in EXACT_ATTENTION:
        raise refuse("attention", model["attention"])
    if model["norm"] not in PLACEMENTS:
        raise refuse("norm", model["norm"])
    if model.get("feedforward", "gelu") not in FEEDFORWARDS:
        raise refuse("feedforward", model["feedforward"])
    if model.get("norm_layer", "layernorm") not in NORM_LAYERS:
        raise UsageError(f"model.norm_layer={model['norm_layer']!r} has no Hugging Face form that --format hf can write "
                         f"(it knows {', '.join(NORM_LAYERS)}); --format safetensors writes the weights of any model")
    if model.get("parametrization", "standard") != "standard":  # its readout multiplier: transformers has none
        raise refuse("parametrization", model["parametrization"])
    for key, value in model.items():
        if key not in EXPRESSED_KEYS:
            raise UsageError(f"model.{key}={value!r} is not something --format hf can express (b6lab export does not "
                             "know it); --format safetensors writes the weights of any model")
    head_dim = model["d_model"] // model["n_heads"]
    default_scale = model["softmax_scale"] is None or math.isclose(model["softmax_scale"], head_dim**-0.5)
    plain = (model["norm"] == "pre" and model.get("norm_layer", "layernorm") == "layernorm"
             and model.get("feedforward", "gelu") == "gelu" and model.get("n_kv_heads") in (None, model["n_heads"])
             and not model.get("qk_norm") and not model.get("logit_softcap") and default_scale)
    return "gpt_neox" if plain else "b6"


def _write_safetensors(folder: Path, config: dict, out: Path) -> str:
    from safetensors.torch import save_file

    state, _, _ = checkpoint.load(folder)
    if config["model"]["tie_embeddings"]:
        state.pop("lm_head.weight")  # safetensors holds no shared tensors; config.yaml says it is tok_emb.weight
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(folder / "config.yaml", out / "config.yaml")
    return "model.safetensors (b6lab's parameter names) and config.yaml"


def _write_hf(folder: Path, config: dict, out: Path, architecture: str) -> str:
    from b6lab.hf.tokenizer import hf_tokenizer

    b6, tokenizer, _ = load_for_sampling(folder, "cpu")
    # The feed-forward's width as built (SwiGLU sizes itself when model.d_ff is unset).
    model_cfg = {**config["model"], "d_ff": b6.blocks[0].ffn.up.weight.size(0)}
    vocab_size, state = b6.cfg.vocab_size, b6.state_dict()
    if architecture == "gpt_neox":
        from transformers import GPTNeoXForCausalLM

        from b6lab.hf.neox import neox_config, neox_state_dict

        hf_model = GPTNeoXForCausalLM(neox_config(model_cfg, vocab_size, tokenizer.eos_id))
        hf_model.load_state_dict(neox_state_dict(state, b6.cfg.n_layers, b6.cfg.n_heads), strict=True)
    else:
        from b6lab.hf.modeling_b6 import B6Config, B6ForCausalLM

        hf_config = B6Config(
            vocab_size=vocab_size, hidden_size=model_cfg["d_model"], num_hidden_layers=model_cfg["n_layers"],
            num_attention_heads=model_cfg["n_heads"], num_key_value_heads=model_cfg.get("n_kv_heads"),
            intermediate_size=model_cfg["d_ff"], max_position_embeddings=model_cfg["max_seq_len"],
            norm_placement=model_cfg["norm"], norm_layer=model_cfg.get("norm_layer", "layernorm"),
            feedforward=model_cfg.get("feedforward", "gelu"), mlp_bias=model_cfg["bias"],
            attention_bias=model_cfg["attn_bias"], qk_norm=bool(model_cfg.get("qk_norm")),
            softmax_scale=model_cfg["softmax_scale"], logit_softcap=model_cfg.get("logit_softcap"),
            rope_theta=model_cfg["rope_theta"], tie_word_embeddings=model_cfg["tie_embeddings"],
            bos_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id,
        )
        B6Config.register_for_auto_class()
        B6ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
        hf_model = B6ForCausalLM(hf_config)
        hf_model.load_state_dict(state, strict=True)
    hf_model.eval()
    _check_same_logits(b6, hf_model, vocab_size)
    hf_model.generation_config.pad_token_id = tokenizer.eos_id
    if not sys.stdout.isatty():  # a log file gets no carriage-return bars (transformers' "Writing model shards")
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    hf_model.save_pretrained(str(out))
    hf_tokenizer(tokenizer, model_cfg["max_seq_len"]).save_pretrained(str(out))
    loads = "AutoModelForCausalLM.from_pretrained(OUT" + (", trust_remote_code=True)" if architecture == "b6" else ")")
    return f"a {'GPT-NeoX' if architecture == 'gpt_neox' else 'B6ForCausalLM'} model and its tokenizer: {loads}"


@torch.no_grad()
def _check_same_logits(b6, hf_model, vocab_size: int) -> None:
    """The converted model must compute what b6lab computes; a difference is a bug in the conversion."""
    probe = torch.randint(0, vocab_size, (2, min(32, b6.cfg.max_seq_len)), generator=torch.Generator().manual_seed(0))
    expected, got = b6(probe), hf_model(probe).logits
    difference = (expected - got).abs().max().item()
    if not difference <= MAX_LOGIT_DIFFERENCE * max(1.0, expected.abs().max().item()):
        raise RuntimeError(f"the exported model's logits differ from b6lab's by {difference:.2e}; the conversion "
                           "no longer matches b6lab/model.py")
