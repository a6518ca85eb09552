"""The one error type the command line reports as a single readable line, and the one way to
shorten an exception's message to a line."""

__all__ = ["UserError", "first_line"]


class UserError(Exception):
    """A failure caused by the user's input (file, option, checkpoint), not by a bug.

    The CLI prints ``str(error)`` on one line and exits non-zero; anything else is a bug and
    keeps its traceback.
    """


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of ``exc``'s message, for a one-line error that wraps it.

    An empty message gives ``default``, or the exception's type name when none is given
    (``KeyError()`` says nothing, ``KeyError`` at least says what kind of failure it was).
    """
    text = str(exc).strip()
    if text:
        return text.splitlines()[0].strip()
    return default if default is not None else type(exc).__name__
