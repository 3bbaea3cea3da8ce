"""Errors that mean "the input was bad", as opposed to bugs.

The CLI turns any :class:`UserError` into one line on stderr and exit code 2; every other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a missing file, a bad option, a corrupt checkpoint."""


class ConfigError(UserError, ValueError):
    """A configuration field has a bad value. The message names the field and what is allowed."""
