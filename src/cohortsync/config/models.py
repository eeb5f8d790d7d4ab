"""Typed models of the project file `cohortsync.yml`."""

from __future__ import annotations

import hmac
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

IDENTIFIER_KINDS = ("user_id", "email", "phone", "anonymous_id")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class _Strict(BaseModel):
    """Base for project-file models: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentityConfig(_Strict):
    """How identifiers are normalised and merged into profiles."""

    primary: str = "email"
    secondary: tuple[str, ...] = ("phone",)
    default_region: str = "US"
    limits: dict[str, int] = Field(default_factory=lambda: {"user_id": 1, "email": 1})

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{2}", value):
            raise ValueError(
                f"default_region must be a two-letter country code such as US, got {value!r}"
            )
        return value

    @field_validator("primary")
    @classmethod
    def _primary(cls, value: str) -> str:
        return _check_kind(value)

    @field_validator("secondary")
    @classmethod
    def _secondary(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_kind(v) for v in value)

    @field_validator("limits")
    @classmethod
    def _limits(cls, value: dict[str, int]) -> dict[str, int]:
        for kind, limit in value.items():
            _check_kind(kind)
            if limit < 1:
                raise ValueError(f"limit for {kind} must be at least 1, got {limit}")
        return value

    def limit_for(self, kind: str) -> int | None:
        """How many identifiers of `kind` one profile may hold (None: unlimited)."""
        if kind in self.limits:
            return self.limits[kind]
        return 1 if kind == self.primary else None


class SourceConfig(_Strict):
    """One ingest source, authenticated by its write key."""

    write_key: str = Field(min_length=8)


class Project(_Strict):
    """The whole project file."""

    store: str = ".cohortsync/store.duckdb"
    identity: IdentityConfig = IdentityConfig()
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    segments: dict[str, Any] = Field(default_factory=dict)
    audiences: dict[str, Any] = Field(default_factory=dict)
    destinations: dict[str, Any] = Field(default_factory=dict)
    conversions: list[Any] = Field(default_factory=list)

    @field_validator("sources")
    @classmethod
    def _source_names(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(
                    f"source name {name!r} must be lower_snake_case (letters, digits, _)"
                )
        keys = [s.write_key for s in value.values()]
        if len(keys) != len(set(keys)):
            raise ValueError("two sources share a write_key: give each source its own key")
        return value

    def source_for_key(self, write_key: str) -> str | None:
        """The name of the source a write key belongs to, or None."""
        found = None
        for name, source in self.sources.items():
            # Compare every key in constant time so timing reveals nothing about valid keys.
            if hmac.compare_digest(source.write_key.encode(), write_key.encode()):
                found = name
        return found


def _check_kind(kind: str) -> str:
    if not _NAME.match(kind):
        raise ValueError(f"identifier kind {kind!r} must be lower_snake_case, e.g. email")
    return kind
