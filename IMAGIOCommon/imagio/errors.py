"""User-facing errors.

Every entry point (CLI, Logic, readers) raises :class:`ImagioError` for bad
input: ``what`` says what is wrong, ``hint`` what the user can do about it.
The CLI prints ``str(error)`` on one line and exits with status 2.
"""


class ImagioError(Exception):
    """A problem with the user's input or request, explained for the user."""

    def __init__(self, what: str, hint: str = ""):
        self.what = what.rstrip(". ")
        self.hint = hint.strip()
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.what}. {self.hint}" if self.hint else f"{self.what}."


class Cancelled(ImagioError):
    """The user cancelled a long operation."""

    def __init__(self, what: str = "Cancelled by the user", hint: str = ""):
        super().__init__(what, hint)
