"""User-facing errors.

Anything a user can fix (a bad flag, a missing file, a malformed preset) raises :class:`UserError`.
The CLI prints its message as one line and exits with code 2; ``--debug`` shows the traceback.
"""


class UserError(Exception):
    """An error caused by the user's input, with a one-line message that says what and how to fix."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
