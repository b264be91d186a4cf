"""The built-in plugins. Each module here is registered exactly as a third-party plugin would be
(see `b6lab.registry.BUILTIN_PLUGINS`); read any of them as an example of writing one."""
