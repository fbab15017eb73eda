"""Which seq holes a share group of collectors may judge yet (issue 33): a hole is counted only when no member
of the group can still deliver the missing messages.

Mosquitto deals a shared subscription's messages round-robin, also to a member that is down: its share waits
in its persistent session and arrives when it comes back. The others see holes in every device's stream
meanwhile. So every member of a group that shares one database writes a heartbeat row (table ``collectors``:
``up_ms`` when its current broker connection was subscribed, ``beat_ms`` its latest beat while connected) at
every gap check, and a pending mark noticed at time ``t`` is judged only once every member seen within
``member_hold_s`` has been connected over the whole window after ``t``::

    beat_ms - reorder_window >= max(t, up_ms)       for every member m

A member that is down stops beating, so the marks noticed after ``beat_ms - window`` wait; a member that came
back has ``up_ms`` set to its reconnection and first drains its backlog for a whole window. A member silent
for longer than ``member_hold_s`` is taken to be gone for good (scaled down): it no longer holds judgement,
and whatever its session still delivers later counts as late fills. See docs/fleet.md, "Several collectors".
"""

from __future__ import annotations

from typing import Any

MEMBER_HOLD_S = 600.0   # default: how long a silent member of a share group holds hole judgement


def beat(db: Any, group: str, member: str, up_ms: int, now_ms: int) -> None:
    """Record that ``member`` of ``group`` is connected (since ``up_ms``) at ``now_ms``."""
    db.execute("INSERT INTO collectors (grp, member, up_ms, beat_ms) VALUES (?, ?, ?, ?) ON CONFLICT (grp, member)"
               " DO UPDATE SET up_ms = excluded.up_ms, beat_ms = excluded.beat_ms", (group, member, up_ms, now_ms))


def judgement_cutoff(db: Any, group: str, now: float, window_s: float, hold_s: float) -> float | None:
    """The latest mark time the group lets be judged at ``now`` (epoch s): ``now - window_s`` at most, earlier
    while a member is down or back for less than a window; None: nothing may be judged yet."""
    cutoff = now - window_s
    since = int((now - hold_s) * 1000)
    for up_ms, beat_ms in db.execute("SELECT up_ms, beat_ms FROM collectors WHERE grp = ? AND beat_ms >= ?",
                                     (group, since)).fetchall():
        member_cutoff = beat_ms / 1000.0 - window_s
        if member_cutoff < up_ms / 1000.0:   # connected for less than a window: its backlog may still come
            return None
        cutoff = min(cutoff, member_cutoff)
    return cutoff
