"""Which deliveries one ``basic.ack(multiple=True)`` may settle. Pure bookkeeping.

Acking a claimed batch tag by tag costs a frame (and broker work) per job. A single ack with
``multiple`` settles every unsettled tag up to the one named, so it is only allowed when the
batch holds all of them: deliveries still waiting in the buffer (a lower priority, say) must
not be acked by accident.
"""

from __future__ import annotations

from collections import defaultdict


class Outstanding:
    """Unsettled delivery tags per channel (tags restart on a new channel)."""

    def __init__(self) -> None:
        self._tags: defaultdict[int, set[int]] = defaultdict(set)

    def add(self, channel: int, tag: int) -> None:
        self._tags[channel].add(tag)

    def settle(self, channel: int, tags: set[int]) -> None:
        remaining = self._tags[channel]
        remaining -= tags
        if not remaining:
            del self._tags[channel]

    def covers(self, channel: int, tags: set[int]) -> bool:
        """True if acking ``max(tags)`` with ``multiple`` settles exactly ``tags``."""
        top = max(tags)
        return all(t in tags for t in self._tags.get(channel, ()) if t <= top)

    def __len__(self) -> int:
        return sum(map(len, self._tags.values()))
