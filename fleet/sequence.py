"""Per-boot sequence tracking: de-duplication, the contiguous mark, holes and late fills, and which boot
started later. Pure logic with no SQL: :class:`~ftedge.fleet.store.FleetStore` persists what it decides
(see the store's module docstring for the rules, ARCHITECTURE.md for where this sits).

A device numbers its messages ``seq`` 1, 2, 3, … per boot. A :class:`Stream` (one boot) keeps ``contiguous``
(every seq up to it arrived or was written off as a hole) and the seqs seen beyond it (``above``). A seq
beyond ``contiguous + 1`` leaves a *mark*; :meth:`Stream.write_off` turns marks older than the reorder window
into counted :class:`Hole` ranges. Whether a seq inside a counted hole already arrived is the caller's
record (``recorded``), because only the database knows it across restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# Holes one write-off counts at most: a stream of sparse seqs (2, 4, 6, …) would otherwise count (and log, and
# store) one hole per seq. The ranges beyond the cap are counted as one hole spanning them, whose seqs that
# did arrive count as already filled.
MAX_HOLES_PER_WRITE_OFF = 100


@dataclass
class Hole:
    """A counted missing range ``lo..hi`` (inclusive); ``filled`` seqs of it arrived late."""

    id: int
    lo: int
    hi: int
    filled: int = 0

    @property
    def complete(self) -> bool:
        return self.filled >= self.hi - self.lo + 1


@dataclass
class Offer:
    """What :meth:`Stream.offer` decided about one seq."""

    new: bool                       # not a duplicate: apply the message
    filled: Hole | None = None      # the counted hole this late arrival fills (``new`` is True)


@dataclass
class Stream:
    """The sequence state of one boot of one device."""

    fleet: str
    device: str
    boot: str
    first_ts: int                  # smallest envelope ts seen (orders boots seen only by Wills or replays)
    first_seen_ms: int             # collector clock when first seen running (0: not yet)
    contiguous: int = 0
    max_seq: int = 0
    above: set[int] = field(default_factory=set)                  # seqs seen beyond `contiguous`
    marks: list[tuple[int, float]] = field(default_factory=list)  # (max seq beyond, when noticed)
    mark_max: int = 0
    holes: list[Hole] = field(default_factory=list)               # counted, not yet filled
    hole_seen: set[int] = field(default_factory=set)              # seqs that arrived inside `holes`
    purge: bool = False            # rows of seqs <= contiguous may be dropped from the store
    stored: bool = False           # the store has a row (UPDATE, not INSERT)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.fleet, self.device, self.boot

    @property
    def pending(self) -> bool:
        """A hole may be open: :meth:`write_off` has something to look at."""
        return bool(self.marks)

    def offer(self, seq: int, retained: bool, now: float, recorded: Callable[[int], bool]) -> Offer:
        """Decide whether ``seq`` (>= 1) is new. ``recorded(seq)`` records a seq the caller must remember
        (one beyond the mark, or one filling a counted hole) and says whether it was not recorded before.
        A retained replay is old by nature: it never leaves a mark by itself."""
        if seq <= self.contiguous:
            for hole in self.holes:
                if hole.lo <= seq <= hole.hi:
                    if not recorded(seq):
                        return Offer(False)
                    hole.filled += 1
                    if hole.complete:
                        self.holes.remove(hole)
                        self.purge = True
                    return Offer(True, hole)
            return Offer(False)
        if seq in self.above:
            return Offer(False)
        if seq == self.contiguous + 1:
            self.contiguous = seq
            if self.above:
                self.advance()
            return Offer(True)
        self.above.add(seq)
        recorded(seq)
        if not retained and seq > self.mark_max:
            self.marks.append((seq, now))
            self.mark_max = seq
        return Offer(True)

    def advance(self) -> None:
        """Move ``contiguous`` over the seqs that arrived right after it; drop what it passed."""
        while self.contiguous + 1 in self.above:
            self.contiguous += 1
            self.above.discard(self.contiguous)
            self.purge = True
        if any(s <= self.contiguous for s in self.above):
            self.above = {s for s in self.above if s > self.contiguous}
            self.purge = True
        self.marks = [(s, t) for s, t in self.marks if s > self.contiguous]

    def write_off(self, cutoff: float) -> list[tuple[int, int]]:
        """Count as missing the ranges below the newest mark noticed at or before ``cutoff``; ``contiguous``
        moves past them. Returns the ranges (inclusive) for the caller to store as :class:`Hole` s: at most
        :data:`MAX_HOLES_PER_WRITE_OFF`, the last one spanning the rest (see :meth:`arrived`)."""
        due = [s for s, t in self.marks if t <= cutoff]
        if not due:
            return []
        top = max(due)
        lo, ranges = self.contiguous + 1, []
        present = sorted(x for x in self.above if x <= top)
        for x in present:
            if x > lo:
                ranges.append((lo, x - 1))
            lo = x + 1
        if len(ranges) > MAX_HOLES_PER_WRITE_OFF:
            lo, hi = ranges[MAX_HOLES_PER_WRITE_OFF - 1][0], ranges[-1][1]
            ranges[MAX_HOLES_PER_WRITE_OFF - 1:] = [(lo, hi)]
            self.hole_seen.update(x for x in present if lo <= x <= hi)   # arrived: their rows stay in `seen`
        self.above.difference_update(present)
        self.purge = self.purge or bool(present)   # their rows sit at or below the new mark now
        self.contiguous = max(self.contiguous, top)
        self.advance()
        return ranges

    def arrived(self, lo: int, hi: int) -> int:
        """How many seqs of ``lo..hi`` are recorded as arrived inside counted holes (a capped write-off's last
        range holds the seqs that arrived between its holes)."""
        return sum(1 for x in self.hole_seen if lo <= x <= hi)


def started_later(a: Stream, b: Stream) -> bool:
    """Whether boot ``a`` started after boot ``b``: by when the collector first saw each running, else (a boot
    seen only by its Will or outbox replays, or both first seen in one batch) by the envelope ``ts``."""
    if a.first_seen_ms and b.first_seen_ms and a.first_seen_ms != b.first_seen_ms:
        return a.first_seen_ms > b.first_seen_ms
    return a.first_ts > b.first_ts
