"""Recent link fingerprints kept by the worker, so a link seen on many pages is sent to Redis once.

It is only an optimisation in front of the frontier's `seen` set, and it must never be more sure than Redis: if
Redis loses writes (a rollback to an older AOF, a failover to a replica), links this cache remembers may be gone
from Redis. The worker therefore clears it whenever its Redis connection fails or Redis's `run_id` changes.
"""

from __future__ import annotations

SEEN_CACHE = 200_000  # fingerprints kept (two generations of half each)


class SeenCache:
    """Two generations of recent fingerprints: bounded memory, and old entries age out generation by generation."""

    __slots__ = ("_cur", "_half", "_old", "clears")

    def __init__(self, size: int = SEEN_CACHE) -> None:
        self._half = max(1, size // 2)
        self._cur: set[bytes] = set()
        self._old: set[bytes] = set()
        self.clears = 0

    def __repr__(self) -> str:
        return f"SeenCache(size={len(self._cur) + len(self._old)}, clears={self.clears})"

    def add(self, fp: bytes) -> bool:
        """True when `fp` was not seen recently (and remembers it)."""
        if fp in self._cur or fp in self._old:
            return False
        self._cur.add(fp)
        if len(self._cur) >= self._half:
            self._old, self._cur = self._cur, set()
        return True

    def clear(self) -> None:
        """Forget everything: Redis may have lost what this cache vouches for."""
        self._cur, self._old = set(), set()
        self.clears += 1
