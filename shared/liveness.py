"""Is this process's work moving? (docs/operations.md §1)

Each loop a service depends on says ``beat(name)`` whenever it comes round, also when it found
nothing to do or its dependency failed: liveness asks whether a loop is stuck, not whether
PostgreSQL is up (a restart would not bring that back; readiness says it). A loop that has not
come round for ``deadline`` seconds makes ``/health`` answer ``503``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


class Liveness:
    def __init__(
        self, deadline: float, loops: Iterable[str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.deadline = deadline
        self.clock = clock
        now = clock()
        #: Loop name -> when it last came round.
        self.beats = dict.fromkeys(loops, now)

    def beat(self, loop: str) -> None:
        self.beats[loop] = self.clock()

    def age(self, loop: str) -> float:
        """Seconds since ``loop`` last came round."""
        return self.clock() - self.beats[loop]

    def stuck(self) -> list[str]:
        """The loops that have not come round within the deadline."""
        return sorted(name for name in self.beats if self.age(name) > self.deadline)
