"""User-facing errors: one plain sentence that says what to do.

Every error the UI or the command line shows to a person is a PatchError (or
a subclass); anything else is a bug and is reported as such.
"""


class PatchError(Exception):
    """An error whose message is meant for the user, not a developer."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field  # which input is at fault, when there is one

    def __str__(self) -> str:
        return self.message


class ModelLoadError(PatchError):
    """The model could not be found, read, or loaded."""


class UnsupportedArchitecture(ModelLoadError):
    """The model loaded, but we do not know where its components live."""


class PairError(PatchError):
    """A prompt pair failed validation. `issues` lists every problem found."""

    def __init__(self, issues):
        self.issues = list(issues)
        first = self.issues[0]
        super().__init__(first.message, first.field)


class HistoryError(PatchError):
    """The history database cannot be read or written, or an import file is not a run."""


class SweepError(PatchError):
    """A sweep request that cannot run as asked."""


class Cancelled(PatchError):
    """The user cancelled a running sweep."""

    def __init__(self, message: str = "The run was cancelled."):
        super().__init__(message)
