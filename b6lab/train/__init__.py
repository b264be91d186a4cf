"""Training: the trainer, its checkpoints, its records, and the hardware plan."""
