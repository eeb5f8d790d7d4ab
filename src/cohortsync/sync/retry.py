"""When to try a failed batch again: exponential backoff, full jitter, or what the server said.

The attempts a backoff counts are those since the destination last answered: a 2xx, or a 429
(or 503) carrying `Retry-After`, starts it over from the base.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class RetryPolicy:
    """Delays for attempt n: uniform(0, min(cap, base·2ⁿ⁻¹)), or exactly what the server asked."""

    base: float = 1.0
    cap: float = 300.0
    window: float = 86400.0
    """Seconds after the first failure when adds and conversions go to dead letters."""
    auth_pause: float = 300.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1`, `attempt` failures into the backoff.

        A server that said when (`Retry-After`) is tried again then, not later: its answer
        starts the backoff over.
        """
        if retry_after is not None:
            return max(0.0, retry_after)
        ceiling = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return self.rng.uniform(0, ceiling)
