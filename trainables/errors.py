"""The one kind of error that is the user's to fix.

`BadInput` (a ValueError) is raised for a bad file, key, value, dataset or environment setting,
with a one-line message naming the culprit. The CLI prints that line and exits 2; any other
exception is a bug or an outage, and keeps its traceback (exit 1).
"""


class BadInput(ValueError):
    """Bad input; the message is one line naming the key, file or value."""


class MissingFile(BadInput, FileNotFoundError):
    """A file the user named (or must provide) is not there."""
