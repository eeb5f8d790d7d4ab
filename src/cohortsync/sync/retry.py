"""When to try a failed batch again: exponential backoff, full jitter, never before Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class RetryPolicy:
    """Delays for attempt n: uniform(0, min(cap, base·2ⁿ⁻¹)), at least what the server asked."""

    base: float = 1.0
    cap: float = 3600.0
    window: float = 86400.0
    """Seconds after the first failure when adds and conversions go to dead letters."""
    auth_pause: float = 300.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1`, having failed `attempt` times."""
        ceiling = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        jittered = self.rng.uniform(0, ceiling)
        return max(jittered, retry_after or 0.0)
