"""Load `cohortsync.yml`: YAML with line numbers, `${ENV}` interpolation, errors as `file:line`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from cohortsync.config.models import Project
from cohortsync.errors import ConfigError
from cohortsync.segments.ast import SegmentProject
from cohortsync.segments.parser import parse_document

PROJECT_FILE = "cohortsync.yml"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class LoadedProject:
    """A validated project plus where it came from, for resolving relative paths and errors."""

    project: Project
    root: Path
    file: Path
    document: Any

    def store_path(self) -> Path:
        """The store location, relative paths taken from the project folder."""
        path = Path(self.project.store)
        return path if path.is_absolute() else self.root / path

    def store_location(self) -> str:
        """What `store:` names: a Postgres URL as written, else the DuckDB file's path."""
        setting = self.project.store
        if setting.startswith(("postgresql://", "postgres://")):
            return setting
        return str(self.store_path())

    def line_of(self, *path: str | int) -> int | None:
        """The 1-based line of a key path in the project file, if known."""
        return line_of(self.document, path)


def find_project_dir(explicit: str | Path | None) -> Path:
    """The project folder: `--project`, else `$COHORTSYNC_PROJECT`, else the current folder."""
    chosen = explicit or os.environ.get("COHORTSYNC_PROJECT") or "."
    return Path(chosen).expanduser().resolve()


def load_project(directory: str | Path | None = None) -> LoadedProject:
    """Read and validate the project file in `directory`."""
    root = find_project_dir(directory)
    file = root / PROJECT_FILE
    if not file.is_file():
        raise ConfigError(
            f"no {PROJECT_FILE} here: run `cohortsync init {root}` to create one, "
            "or pass --project DIR",
            file=str(file),
        )
    return parse_project(file.read_text(encoding="utf-8"), file)


def parse_project(text: str, file: Path) -> LoadedProject:
    """Validate project-file text; every problem becomes a `ConfigError` with its line."""
    display = display_path(file)
    try:
        document = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            f"this is not valid YAML ({exc.problem or exc.context}): check indentation and quoting",
            display,
            line,
        ) from None
    if document is None:
        document = CommentedMap()
    if not isinstance(document, Mapping):
        raise ConfigError("the project file must be a mapping of keys such as store:", display, 1)
    plain = _interpolate(document, (), display, document)
    try:
        project = Project.model_validate(plain)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        raise ConfigError(
            _explain(error["type"], loc, error["msg"]), display, _nearest_line(document, loc)
        ) from None
    return LoadedProject(project=project, root=file.parent.resolve(), file=file, document=document)


def line_of(document: Any, path: tuple[str | int, ...]) -> int | None:
    """The line of the value at `path` (or of the last key on it that exists)."""
    return _nearest_line(document, path)


def _nearest_line(document: Any, path: tuple[Any, ...]) -> int | None:
    node, line = document, 1
    for key in path:
        if isinstance(node, CommentedMap) and key in node:
            line = node.lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
            line = node.lc.item(key)[0] + 1
            node = node[key]
        else:
            break
    return line


def _interpolate(node: Any, path: tuple[Any, ...], display: str, document: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _interpolate(v, (*path, k), display, document) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, (*path, i), display, document) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _ENV.sub(lambda m: _env_value(m, path, display, document), node)
    return node


def _env_value(match: re.Match[str], path: tuple[Any, ...], display: str, document: Any) -> str:
    name, default = match.group(1), match.group(2)
    value = os.environ.get(name)
    if value is not None:
        return value
    if default is not None:
        return default
    raise ConfigError(
        f"environment variable {name} is not set: export it, or write ${{{name}:-default}}",
        display,
        _nearest_line(document, path),
    )


def _explain(kind: str, loc: tuple[Any, ...], message: str) -> str:
    where = ".".join(str(p) for p in loc) or "the file"
    if kind == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1])
        allowed = _allowed_keys(loc[:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"unknown key {loc[-1]!r} in {parent or 'the top level'}: remove or rename it{hint}"
    if kind == "missing":
        return f"{where} is required: add it"
    message = message.removeprefix("Value error, ")
    return f"{where}: {message}"


def _allowed_keys(parent: tuple[Any, ...]) -> list[str]:
    current: Any = Project
    for part in parent:
        fields = getattr(current, "model_fields", None)
        if fields is not None:
            if part not in fields:
                return []
            current = fields[part].annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return []
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def display_path(file: Path) -> str:
    """A file as errors name it: relative to the current folder when inside it."""
    try:
        return str(file.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(file)


def parse_segments(loaded: LoadedProject) -> SegmentProject:
    """Parse and bind the traits, segments and audiences of a loaded project."""
    return parse_document(loaded.document, display_path(loaded.file))
