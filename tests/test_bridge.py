"""The socket bridge's hand-over from the I/O thread to the actor."""
from __future__ import annotations

import select
from typing import Any

from protocol.node import ListenConfig
from runtime.bridge import IOBridge


class _RacingSocket:
    """The actor's end of the wake-up socketpair, with a post from the I/O
    thread landing while the actor drains it (the interleaving that once
    left the actor asleep for good)."""

    def __init__(self, sock: Any, during_drain: Any) -> None:
        self.sock = sock
        self.during_drain = during_drain

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, n: int) -> bytes:
        if self.during_drain is not None:
            hook, self.during_drain = self.during_drain, None
            hook()
        return self.sock.recv(n)


def _readable(bridge: IOBridge) -> bool:
    return bool(select.select([bridge.fileno()], [], [], 0)[0])


def test_a_post_during_take_never_loses_the_next_wake_up() -> None:
    bridge = IOBridge(ListenConfig(), node_id="n1", cluster_id="c")
    real = bridge._inbox._rsock
    try:
        bridge._post(("request", 1, 1, "first"))
        assert _readable(bridge)
        bridge._inbox._rsock = _RacingSocket(real, lambda: bridge._post(("request", 1, 2, "second")))
        taken = bridge.take()
        bridge._inbox._rsock = real
        # the racing post is either taken now or announced by a byte
        if len(taken) == 1:
            assert _readable(bridge)
            taken += bridge.take()
        assert [e[2] for e in taken] == [1, 2]
        for corr in range(3, 50):
            bridge._post(("request", 1, corr, "more"))
            assert _readable(bridge), f"post {corr} did not wake the actor"
            assert [e[2] for e in bridge.take()] == [corr]
    finally:
        bridge._inbox._rsock = real
        real.close()
        bridge._inbox._wsock.close()
        bridge.loop.close()
