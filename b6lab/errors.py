"""Errors a user can act on.

Anything raised as a `UsageError` is the user's to fix (a typo in a config, an unknown plugin,
a missing file). The command line prints its message as one line and exits with status 2,
never with a traceback. Everything else is a bug and keeps its traceback.
"""

import difflib


class UsageError(Exception):
    """A mistake in what the user asked for; the message says what, where, and what is accepted."""


class ConfigError(UsageError):
    """A config key, value or file that is wrong."""

    def __init__(self, message: str, key: str | None = None, file: str | None = None):
        self.message, self.key, self.file = message, key, file
        where = " ".join(part for part in (f"{key}" if key else "", f"(in {file})" if file else "") if part)
        super().__init__(f"{where}: {message}" if where else message)

    def located(self, file: str | None) -> "ConfigError":
        """The same error, saying which file (or --set, or preset) the key came from."""
        return ConfigError(self.message, self.key, file)


class PluginError(UsageError):
    """A plugin that is unknown, registered twice, or unable to run here."""


class DataError(UsageError):
    """A data source that cannot be read: a missing or corrupt file, a gated or offline corpus."""


def exception_line(exc: BaseException, limit: int | None = 300) -> str:
    """`TypeName: first line of its message` (cut to `limit` characters): a library's error in one line."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:limit]}"


def unknown(value, choices, what: str) -> str:
    """`unknown WHAT 'value' (did you mean 'closest'?); known: a, b, c`: every unknown-name message."""
    names = [str(c) for c in choices]
    # A name the value shortens (grace for grace_period) first, else the closest spelling.
    shortened = [n for n in names if n.startswith(str(value))]
    closest = difflib.get_close_matches(str(value), shortened or names, n=1, cutoff=0 if shortened else 0.6)
    hint = f" (did you mean {closest[0]!r}?)" if closest else ""
    return f"unknown {what} {value!r}{hint}; known: {', '.join(names)}"
