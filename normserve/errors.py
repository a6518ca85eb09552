"""The one error type the command line reports as a single readable line."""

__all__ = ["UserError"]


class UserError(Exception):
    """A failure caused by the user's input (file, option, checkpoint), not by a bug.

    The CLI prints ``str(error)`` on one line and exits non-zero; anything else is a bug and
    keeps its traceback.
    """
