"""A bounded LRU cache for what a backbone derives from input sizes and keeps between forwards:
TransNeXt's position tables, window masks and length scales, a table's resizing taps,
TransXNet's resized position tables. Entries are built by a factory on a miss; a validity check
may declare an entry stale (e.g. one derived from weights that have changed since).
"""
from collections import OrderedDict
from typing import Callable, Hashable, List, Optional

from ...utils import compat


class SizeKeyedCache:
    """Bounded LRU cache of size-dependent tensors (or anything built from a size).

    Args:
        max_entries: the most entries kept; the least recently used is dropped beyond it.
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f'max_entries must be >= 1, got {max_entries}')
        self.max_entries = max_entries
        self._entries: 'OrderedDict[Hashable, object]' = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> List[Hashable]:
        """The keys held, least recently used first."""
        return list(self._entries)

    def get(self, key: Hashable, factory: Callable[[], object],
            valid: Optional[Callable[[object], bool]] = None) -> object:
        """Return the entry for ``key``, building it with ``factory()`` on a miss, or when
        ``valid`` (if given) says the entry held is stale (counted as a miss)."""
        if key in self._entries and (valid is None or valid(self._entries[key])):
            # A compiled forward leaves the bookkeeping alone: torch.compile guards on these
            # attributes, so changing them in every call would recompile every call.
            if not compat.is_compiling():
                self.hits += 1
                self._entries.move_to_end(key)
            return self._entries[key]
        self._entries.pop(key, None)
        self.misses += 1
        value = factory()
        self._entries[key] = value
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Drop every entry and reset the hit/miss counters."""
        self._entries.clear()
        self.hits = self.misses = 0
