"""Destinations declared wrong or with a narrow capability, for the registry's and the project
check's error messages."""

from __future__ import annotations

from typing import Any, ClassVar

from cohortsync.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    ConversionBatch,
    Destination,
    DestinationConfig,
)


class OddConfig(DestinationConfig):
    """No settings beyond `type`."""


class LegacyDestination(Destination[OddConfig]):
    """Written before capabilities: loose class attributes only."""

    kind: ClassVar[str] = "legacy"
    config_model: ClassVar[type[DestinationConfig]] = OddConfig
    accepts = ("email",)

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        return []


class AddOnlyDestination(LegacyDestination):
    """A list that can take members in but never out."""

    kind: ClassVar[str] = "add_only"
    capabilities = Capabilities(identifiers=("email",), removes=False)

    def apply(self, batch: Batch) -> BatchResult:
        return BatchResult()
