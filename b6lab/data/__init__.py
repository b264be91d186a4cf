"""Documents in, token batches out: splitting, tokenizing, packing, shuffling, resuming."""
