"""The one exception type that means "the user gave us something wrong".

The CLI prints a `UserError` as a single line and exits non-zero; any other exception is a bug and
keeps its traceback. Messages say what is wrong and what to do about it.
"""


class UserError(Exception):
    """Bad input: a missing or corrupt file, an unknown name, a config value out of range."""
