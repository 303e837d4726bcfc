"""A node's clocks as piecewise-linear functions of virtual time.

Virtual time ``T`` is an integer number of microseconds owned by the
:class:`sim.world.World`.  Each node has

* a **monotonic** clock, starting at ``0.0`` when the node is added and
  running at ``rate = 1 + drift_ppm * 1e-6`` local seconds per virtual
  second.  It survives crashes and restarts (a process restart, not a
  reboot) and never goes backwards: changing the drift re-bases the line at
  the current point, and reads are additionally clamped to the last value
  returned;
* a **wall** clock, ``EPOCH + T_added + offset`` at the moment the node is
  added, running at the same rate.  ``set_offset`` re-anchors it to
  ``true_wall(now) + offset`` and ``jump`` steps it by ``delta`` seconds;
  both may move it backwards.  The monotonic clock is unaffected by either.

Timers (``wakeupAfter``) are measured on the monotonic clock: a period of
``p`` local seconds lasts ``p / rate`` virtual seconds, rounded up to the
next microsecond.
"""
from __future__ import annotations

import math

#: Wall-clock seconds at virtual time zero (a fixed fake epoch, 2023-11-14).
EPOCH_S = 1_700_000_000.0

_US = 1_000_000


class NodeClock:
    """The monotonic and wall clocks of one node."""

    __slots__ = ("rate", "drift_ppm", "_base_us", "_mono_base", "_wall_base", "_last_mono")

    def __init__(self, now_us: int, offset_s: float = 0.0, drift_ppm: float = 0.0) -> None:
        self.drift_ppm = float(drift_ppm)
        self.rate = 1.0 + self.drift_ppm * 1e-6
        self._base_us = now_us
        self._mono_base = 0.0
        self._wall_base = EPOCH_S + now_us / _US + offset_s
        self._last_mono = 0.0

    # ----------------------------------------------------------------- reads
    def monotonic(self, now_us: int) -> float:
        value = self._mono_base + (now_us - self._base_us) * self.rate / _US
        if value < self._last_mono:
            return self._last_mono
        self._last_mono = value
        return value

    def wall(self, now_us: int) -> float:
        return self._wall_base + (now_us - self._base_us) * self.rate / _US

    def offset(self, now_us: int) -> float:
        """Current wall-clock error against true virtual wall time, seconds."""
        return self.wall(now_us) - (EPOCH_S + now_us / _US)

    # ------------------------------------------------------------- changes
    def _rebase(self, now_us: int) -> None:
        self._mono_base = self.monotonic(now_us)
        self._wall_base = self.wall(now_us)
        self._base_us = now_us

    def set_drift(self, now_us: int, drift_ppm: float) -> None:
        self._rebase(now_us)
        self.drift_ppm = float(drift_ppm)
        self.rate = 1.0 + self.drift_ppm * 1e-6

    def set_offset(self, now_us: int, offset_s: float) -> None:
        self._rebase(now_us)
        self._wall_base = EPOCH_S + now_us / _US + offset_s

    def jump(self, now_us: int, delta_s: float) -> None:
        self._rebase(now_us)
        self._wall_base += delta_s

    # -------------------------------------------------------------- timers
    def virtual_delay_us(self, local_s: float) -> int:
        """Virtual microseconds until ``local_s`` monotonic seconds elapse."""
        if local_s <= 0:
            return 0
        return max(0, math.ceil(local_s * _US / self.rate - 1e-6))
