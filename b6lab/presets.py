"""Named starting points for a run's config (`--preset NAME`), as partial configs.

The config's own defaults (see `b6lab.config`) are the laptop default that `b6lab train` runs
with no arguments on a CPU; with a GPU and no preset, it starts from `GPU_DEFAULT_PRESET`.
"""

PRESETS: dict[str, dict] = {
    # Trains on a CPU in seconds: for tests and for trying a plugin.
    "tiny": {
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 256, "max_seq_len": 64},
        "data": {"tokenizer": "byte", "num_workers": 0, "shuffle_buffer": 64},
        "train": {"batch_size": 8, "max_steps": 50, "eval_interval": 25, "eval_steps": 4, "log_interval": 5},
    },
    # The CPU benchmark workload of benchmarks/README.md.
    "cpu-small": {
        "model": {"d_model": 384, "n_layers": 6, "n_heads": 6, "d_ff": 1536, "max_seq_len": 256},
        "data": {"tokenizer": "bpe", "bpe_vocab_size": 8192},
        "train": {"batch_size": 8, "max_steps": 2000, "eval_interval": 200, "eval_steps": 20},
    },
    # nanoGPT's Shakespeare recipes (karpathy/nanoGPT README), as b6lab configs: a single text
    # file (data.path, which the user sets) split by position, first 90% train, last 10% validation,
    # one byte per character. The CPU one reached val loss 1.85 in 2000 steps, where nanoGPT reaches 1.88
    # (benchmarks/quality/nanogpt_shakespeare_char_cpu.md).
    #   b6lab train --preset shakespeare-char-cpu --set data.path=tinyshakespeare.txt
    "shakespeare-char-cpu": {
        "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_seq_len": 64, "dropout": 0.0},
        "data": {"source": "text", "tokenizer": "byte", "val_fraction": 0.1, "num_workers": 0},
        "optim": {"name": "adamw", "lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1, "grad_clip": 1.0},
        "schedule": {"name": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.1},
        # eval_steps covers the whole validation split (~1740 sequences of 64), where nanoGPT samples 20 batches
        "train": {"batch_size": 12, "max_steps": 2000, "eval_interval": 250, "eval_steps": 150, "log_interval": 50},
    },
    # The same model, tokens and steps with b6lab's own choices, found by
    # experiments/shakespeare_tuning.yaml: Muon on the hidden matrices (AdamW, no weight decay, on
    # the embeddings and norms) and a cosine decay to 0. Val loss 1.70 where the recipe reaches 1.85.
    #   b6lab train --preset shakespeare-char-cpu-tuned --set data.path=tinyshakespeare.txt
    "shakespeare-char-cpu-tuned": {
        "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_seq_len": 64, "dropout": 0.0},
        "data": {"source": "text", "tokenizer": "byte", "val_fraction": 0.1, "num_workers": 0},
        "optim": {"name": "muon", "lr": 0.03, "weight_decay": 0.1, "adamw_lr": 3e-3, "adamw_betas": (0.9, 0.99),
                  "adamw_weight_decay": 0.0, "grad_clip": 1.0},
        "schedule": {"name": "cosine", "warmup_steps": 50, "min_lr_ratio": 0.0},
        "train": {"batch_size": 12, "max_steps": 2000, "eval_interval": 250, "eval_steps": 150, "log_interval": 50},
    },
    # The GPU one: best val loss 1.4697 in nanoGPT's README.
    "shakespeare-char": {
        "model": {"d_model": 384, "n_layers": 6, "n_heads": 6, "max_seq_len": 256, "dropout": 0.2},
        "data": {"source": "text", "tokenizer": "byte", "val_fraction": 0.1},
        "optim": {"name": "adamw", "lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1, "grad_clip": 1.0},
        "schedule": {"name": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.1},
        "train": {"batch_size": 64, "max_steps": 5000, "eval_interval": 250, "eval_steps": 7, "log_interval": 50},
    },
    # GPT-2 small (124M) and medium (350M, the original B6 default), GPT-2 vocabulary.
    "gpt2-small": {
        "model": {"vocab_size": 50304, "d_model": 768, "n_layers": 12, "n_heads": 12, "d_ff": 3072, "max_seq_len": 1024},
        "data": {"tokenizer": "gpt2", "num_workers": 4},
        "train": {"batch_size": 16, "grad_accum_steps": 2, "max_steps": 5000, "eval_interval": 250, "eval_steps": 40},
    },
    "gpt2-medium": {
        "model": {"vocab_size": 50304, "d_model": 1024, "n_layers": 24, "n_heads": 16, "d_ff": 4096, "max_seq_len": 1024},
        "data": {"tokenizer": "gpt2", "num_workers": 4},
        "train": {"batch_size": 16, "grad_accum_steps": 4, "max_steps": 5000, "eval_interval": 250, "eval_steps": 40},
    },
}

# `b6lab train` with no arguments on a GPU: GPT-2 small on the embedded corpus, with a BPE
# vocabulary trained on that corpus (no download needed).
GPU_DEFAULT = {
    **PRESETS["gpt2-small"],
    "data": {"tokenizer": "bpe", "bpe_vocab_size": 16384, "num_workers": 4},
    "model": {**PRESETS["gpt2-small"]["model"], "vocab_size": None},
    "train": {**PRESETS["gpt2-small"]["train"], "max_steps": 3000},
}
