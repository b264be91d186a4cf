"""b6lab models and tokenizers in the Hugging Face formats (what `b6lab export --format hf` writes)."""
