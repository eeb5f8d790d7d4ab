"""Error classes shared by every layer: each says where it happened and how to fix it."""

from __future__ import annotations


class CohortsyncError(Exception):
    """Base of every error cohortsync reports to a user (never shown as a traceback)."""


class ConfigError(CohortsyncError):
    """A problem in a project file, located as `file:line`."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        super().__init__(self.located())

    def located(self) -> str:
        """Render as `file:line: message` (the form editors and CI annotate)."""
        if self.file is None:
            return self.message
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class InputError(CohortsyncError):
    """Bad input on the command line or in a file the user handed us."""


class NotFoundError(CohortsyncError):
    """A profile, identifier or object the user asked for does not exist."""


class StoreError(CohortsyncError):
    """The store cannot be opened: its file is unreadable, or its server cannot be reached."""


class StoreInUseError(StoreError):
    """The DuckDB store file is held by another process; DuckDB allows one writer per file."""
