"""The one exception type for a user's mistake: the CLI prints it as one line and exits non-zero."""


class PicojouleError(Exception):
    """A user-facing error; its message is one line naming the file, the field and what was expected."""


class WeightsError(PicojouleError):
    """A weights file that is missing, unreadable or does not fit the model (a config blames field 'weights')."""
