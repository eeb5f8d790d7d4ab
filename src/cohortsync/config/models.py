"""Typed models of the project file `cohortsync.yml`."""

from __future__ import annotations

import hmac
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DURATION = re.compile(r"(\d+)([mhdw])")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
_ORIGIN = re.compile(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


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
    allowed_origins: tuple[str, ...] = ("*",)
    """Web origins whose pages may send this source's events (CORS); `*` allows any."""

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"allowed_origins entry {origin!r} must be * or an origin such as "
                    "https://shop.example.com (scheme, host and port only, no path)"
                )
        return tuple(origin.lower() for origin in value)


class SyncConfig(_Strict):
    """How delivery retries: exponential backoff with full jitter, then dead letters."""

    retry_window: str = "24h"
    """Give up on a failing add or conversion after this long (`<n>m|h|d|w`); exits never."""
    backoff_base: float = Field(default=1.0, gt=0)
    """Seconds before the first retry (doubling each attempt, jittered)."""
    backoff_cap: float = Field(default=300.0, gt=0)
    """Most seconds between two attempts (a destination healthy again waits no longer)."""
    auth_pause: float = Field(default=300.0, gt=0)
    """Seconds a destination rests after a 401/403 before it is tried again."""
    dry_run_dir: str = ".cohortsync/dry-run"
    """Where dry runs write the requests they would send (relative to the project file)."""
    reconcile_threshold: float = Field(default=0.01, ge=0, le=1)
    """`sync --reconcile` rebuilds a platform's list only when its count differs from
    cohortsync's members by more than this share of them; below it, it only reports."""

    @field_validator("retry_window")
    @classmethod
    def _window(cls, value: str) -> str:
        if not _DURATION.fullmatch(value.strip()):
            raise ValueError(f"retry_window {value!r} must look like 30m, 24h, 3d or 1w")
        return value.strip()

    def retry_seconds(self) -> float:
        """The retry window in seconds."""
        amount, unit = int(self.retry_window[:-1]), self.retry_window[-1]
        return amount * _UNIT_SECONDS[unit]


class ConversionRule(_Strict):
    """Events forwarded once each as a conversion signal (`order_completed` → `Purchase`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    event: str = Field(min_length=1)
    as_: str = Field(alias="as", min_length=1)
    value: str | None = None
    """The event property holding the conversion value, e.g. revenue."""
    currency: str | None = Field(default=None, pattern=r"^[A-Za-z]{3}$")
    """ISO 4217 code used when the event carries no `currency` property."""
    destinations: tuple[str, ...] = Field(min_length=1)


class LintConfig(_Strict):
    """Thresholds and severities of `cohortsync lint`."""

    max_audiences_per_destination: int = Field(default=10, ge=1)
    """More ad-platform audiences than this on one destination is a lint finding."""
    min_identifier_coverage: float = Field(default=0.8, ge=0, le=1)
    """Least share of members holding the identifier a destination matches on."""
    max_anonymous_share: float = Field(default=0.2, ge=0, le=1)
    """Most share of members with no identifier an audience may send."""
    near_duplicate_overlap: float = Field(default=0.8, gt=0, le=1)
    """Jaccard overlap above which two audiences on one destination are near duplicates."""
    intent_events: tuple[str, ...] = ("product_viewed", "added_to_cart", "checkout_started")
    """Browse, cart and checkout events: an audience requiring one is an intent audience."""
    no_discount_segments: tuple[str, ...] = ()
    """Owned segments told "no discount": a discount audience must not overlap them."""
    severity: dict[str, str] = Field(default_factory=dict)
    """Per code: `error`, `warning` or `off`."""

    @field_validator("severity")
    @classmethod
    def _severity(cls, value: dict[str, str]) -> dict[str, str]:
        for code, level in value.items():
            if level not in ("error", "warning", "off"):
                raise ValueError(
                    f"lint severity for {code} must be error, warning or off, got {level!r}"
                )
        return value


class ReportConfig(_Strict):
    """How `cohortsync report` measures holdout lift."""

    window: str = "7d"
    """How long after entering an audience a conversion counts, e.g. 7d."""
    conversion_event: str | None = Field(default=None, min_length=1)
    """The event that counts as a conversion; by default the first `conversions:` rule's."""
    discount_properties: tuple[str, ...] = ("discount",)
    """Order properties holding a discount amount: a number above 0 in any makes the order
    discounted (the first such is its amount)."""
    coupon_properties: tuple[str, ...] = ("coupon",)
    """Order properties holding a coupon code: a non-empty string makes the order discounted."""

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if not _DURATION.fullmatch(value.strip()):
            raise ValueError(f"report window {value!r} must look like 30m, 24h, 3d or 1w")
        return value.strip()

    def window_seconds(self) -> int:
        """The window in seconds."""
        return int(self.window[:-1]) * _UNIT_SECONDS[self.window[-1]]


class AdminConfig(_Strict):
    """Who may use the admin API and the dashboard of `serve`."""

    tokens: tuple[str, ...] = ()
    """Bearer tokens of the admin API and the dashboard (`COHORTSYNC_ADMIN_TOKEN` adds one)."""

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for token in value:
            if len(token) < 16:
                raise ValueError(
                    "an admin token must be at least 16 characters: "
                    "make one with `python -c 'import secrets; print(secrets.token_urlsafe())'`"
                )
        return value


class Project(_Strict):
    """The whole project file."""

    store: str = ".cohortsync/store.duckdb"
    identity: IdentityConfig = IdentityConfig()
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    segments: dict[str, Any] = Field(default_factory=dict)
    audiences: dict[str, Any] = Field(default_factory=dict)
    destinations: dict[str, Any] = Field(default_factory=dict)
    conversions: list[ConversionRule] = Field(default_factory=list)
    sync: SyncConfig = SyncConfig()
    lint: LintConfig = LintConfig()
    report: ReportConfig = ReportConfig()
    admin: AdminConfig = AdminConfig()

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

    @model_validator(mode="after")
    def _admin_is_not_a_write_key(self) -> Project:
        keys = {s.write_key for s in self.sources.values()}
        for index, token in enumerate(self.admin.tokens):
            if token in keys:  # located at the token's own line, its value never shown
                problem = PydanticCustomError(
                    "admin_token",
                    "an admin token equals a source's write_key: write keys are public "
                    "(browser SDKs publish them), give admin.tokens a secret of its own",
                )
                raise ValidationError.from_exception_data(
                    "Project",
                    [InitErrorDetails(type=problem, loc=("admin", "tokens", index), input="")],
                )
        return self

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
