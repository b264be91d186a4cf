"""Built-in initialisations: the starting values of a model's weights (`model.init`).

An init is built as `factory(**options)` and returns a function `init(model)` that sets the
parameters of a freshly built B6 in place (`model.cfg` is its ModelConfig). It runs once, before
anything else touches the weights; a norm placement's own `init_residual` (DeepNorm's) runs after
it. Norm gains and biases are left as the norm layers build them (ones and zeros).

What the init is matters as much as the architecture it is asked to train: GPT-2's small normal
init and fairseq's Xavier init give the same Post-LN block very different branch-to-skip ratios at
step 0 (experiments/norm_depth.yaml compares both).
"""

from __future__ import annotations

import math

import torch.nn as nn

import b6lab
from b6lab.model import CausalSelfAttention


def gpt2():
    """GPT-2 / nanoGPT (the B6 default): every weight N(0, 0.02), the projections that add into the
    residual stream N(0, 0.02 / sqrt(2 n_layers)), biases zero."""

    def init(model: nn.Module) -> None:
        n_layers = model.cfg.n_layers

        def init_module(module: nn.Module) -> None:
            # The residual projections are scaled so the stream's variance does not grow with depth.
            if isinstance(module, nn.Linear):
                residual = getattr(module, "residual_projection", False)
                std = 0.02 / math.sqrt(2 * n_layers) if residual else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

        model.apply(init_module)

    return init


def xavier():
    """fairseq's Transformer (what Xiong et al. 2020 trained): Xavier-uniform linear weights (the
    query, key and value projections with gain 1/sqrt(2)), embeddings N(0, d_model^-1/2), biases
    zero, no extra scaling of the residual projections."""

    # Following fairseq: models/transformer Embedding() (normal, std embedding_dim ** -0.5) and
    # Linear() (xavier_uniform_, bias 0; the 2019 TransformerEncoderLayer built fc1/fc2 with it),
    # and modules/multihead_attention.py reset_parameters() (q/k/v xavier_uniform_ with gain
    # 1/sqrt(2) when they share a dimension, out_proj gain 1). fairseq's separate q, k and v are
    # one fused matrix here, so each block of its rows is initialised as its own matrix. fairseq
    # also multiplies the embeddings by sqrt(d_model) in its forward; that is the forward, not the
    # init, and B6 does not.
    def init(model: nn.Module) -> None:
        embedding_std = model.cfg.d_model ** -0.5
        for name, module in model.named_modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=embedding_std)
            elif isinstance(module, nn.Linear) and name == "lm_head":
                # fairseq's untied output projection is N(0, d^-1/2); a tied one is the embedding.
                if module.weight is not model.tok_emb.weight:
                    nn.init.normal_(module.weight, mean=0.0, std=embedding_std)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in model.modules():  # after the loop above, which gave qkv gain 1
            if isinstance(module, CausalSelfAttention):
                d_model = module.proj.weight.size(0)
                kv_dim = (module.qkv.weight.size(0) - d_model) // 2  # n_kv_heads * head_dim
                for weight in module.qkv.weight.data.split([d_model, kv_dim, kv_dim]):
                    nn.init.xavier_uniform_(weight, gain=1 / math.sqrt(2))

    return init


@b6lab.hookimpl
def b6lab_register_init(register):
    register("gpt2", gpt2)
    register("xavier", xavier)
