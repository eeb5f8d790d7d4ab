"""The project file: models, loading, `${ENV}` interpolation, errors with file:line."""

from cohortsync.config.loader import PROJECT_FILE, LoadedProject, load_project, parse_project
from cohortsync.config.models import IdentityConfig, Project, SourceConfig

__all__ = [
    "PROJECT_FILE",
    "IdentityConfig",
    "LoadedProject",
    "Project",
    "SourceConfig",
    "load_project",
    "parse_project",
]
