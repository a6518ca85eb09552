"""Export failures the CLI reports as one line."""

from normserve.errors import UserError

__all__ = ["ExportError", "ParityError"]


class ExportError(UserError):
    """The model cannot be exported as asked; nothing was written."""


class ParityError(ExportError):
    """The exported graph does not reproduce the eager model within tolerance."""
