"""b6lab: train B6 language models and run controlled experiments over their parts."""

import pluggy

__version__ = "0.1.0"

# What a plugin decorates its hook functions with: `@b6lab.hookimpl`.
hookimpl = pluggy.HookimplMarker("b6lab")
