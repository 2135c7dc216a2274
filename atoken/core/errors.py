"""Error types shared across atoken."""


class AtokenError(Exception):
    """Base class of every error atoken raises on purpose."""


class InputError(AtokenError, ValueError):
    """User input (file, tensor, option) that atoken cannot use; the message says what and why."""
