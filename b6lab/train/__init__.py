"""Training: the trainer, its checkpoints, its records, and the hardware plan.

Calling the package, `b6lab.train(...)`, runs `b6lab.api.train`.
"""

from b6lab import callable_package

callable_package(__name__, "train")
