"""The agency over Thespian's real TCP transport (multiprocTCPBase, loopback).

Three RaftPeer actors, each in its own OS process: elect a leader, commit
and read back writes (reads are linearizable ReadIndex reads, some sent to a
follower so the forwarding path is used), SIGKILL the leader's process, see
a survivor take over, commit more, read everything acknowledged back, shut
down and check that no process is left.  Bounded by a SIGALRM watchdog; the
agency is shut down in a ``finally`` whatever happens.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import Any, Iterator

import pytest

from protocol.agency import OK
from runtime.agency_local import (
    THESPIAN_BACKOFF_MIN_MS,
    LocalAgency,
    _ephemeral_low,
    free_port,
    tune_thespian_transport,
)

pytestmark = [
    pytest.mark.realnet,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs fork, SIGKILL and /proc"),
]

WATCHDOG_S = 90  # hard bound; a normal run takes a few seconds


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the main thread after ``seconds``."""

    def fire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"realnet test exceeded its {seconds}s watchdog")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def write_and_check(agency: LocalAgency, acked: dict[str, Any], path: str, value: Any, reader: str) -> int:
    """Write, require an ok, then a linearizable read started after the
    acknowledgement (sent to ``reader``) must see the value."""
    w = agency.write(path, value, timeout_s=10)
    assert w.status == OK and w.result["ok"], w
    acked[path] = value
    r = agency.read(path, timeout_s=10, via=reader)
    assert r.status == OK, r
    assert r.result["values"] == [value], (path, r)
    assert r.result["revision"] >= w.result["revision"], (w, r)
    return w.result["revision"]


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    import socket

    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(p < _ephemeral_low() for p in ports)  # no outgoing connection can take them meanwhile
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_thespian_transmit_backoff_starts_short_and_still_grows() -> None:
    from datetime import timedelta

    import thespian.system.transport as transport

    tune_thespian_transport()
    first = transport.backoffDelay(0)
    assert first <= timedelta(milliseconds=2 * THESPIAN_BACKOFF_MIN_MS)  # Thespian's own: 34 ms
    pauses = [first]
    for _ in range(30):
        pauses.append(transport.backoffDelay(pauses[-1]))
    assert all(b > a for a, b in zip(pauses, pauses[1:]) if b < transport.MAX_BACKOFF_DELAY)
    assert pauses[-1] == transport.MAX_BACKOFF_DELAY  # a peer that stays unreachable is still left alone


def test_agency_survives_leader_sigkill(tmp_path) -> None:
    timings: dict[str, float] = {}  # seconds since the start unless "kill->"
    t0 = time.monotonic()
    agency = LocalAgency(tmp_path / "agency", n=3)
    leftovers: list[int] | None = None
    peer_pids: dict[str, int] = {}
    try:
        with watchdog(WATCHDOG_S):
            agency.start()
            timings["start"] = time.monotonic() - t0
            peer_pids = dict(agency.pids)
            assert len(set(peer_pids.values())) == 3, "each peer runs in its own process"
            assert os.getpid() not in peer_pids.values()

            leader = agency.leader(timeout_s=15)
            assert leader is not None, {n: agency.status(n) for n in agency.node_ids}
            timings["first leader"] = time.monotonic() - t0
            st = agency.status(leader)
            assert st is not None and st.status["role"] == "leader"
            assert st.pid == peer_pids[leader]
            first_term = st.status["term"]
            followers = [n for n in agency.node_ids if n != leader]

            acked: dict[str, Any] = {}
            revisions = []
            for i in range(8):
                revisions.append(write_and_check(agency, acked, f"/realnet/before/{i}", {"i": i},
                                                 reader=followers[i % 2]))
            assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
            timings["writes before kill"] = time.monotonic() - t0

            # SIGKILL exactly the leader's actor process.
            victim_pid = agency.status(leader).pid
            assert victim_pid == peer_pids[leader]
            t_kill = time.monotonic()
            agency.kill(leader)
            for n in followers:
                os.kill(peer_pids[n], 0)  # the others are untouched
            for name, pid in agency.system_pids.items():
                os.kill(pid, 0)  # and so are Thespian's admin and logger

            # A write issued at once: the client's retries ride out the
            # election (requests forwarded to the dead leader are lost).
            revisions.append(write_and_check(agency, acked, "/realnet/during-failover", "x",
                                             reader=followers[0]))
            timings["kill->first write acked"] = time.monotonic() - t_kill

            new_leader = agency.leader(timeout_s=15)
            assert new_leader in followers, new_leader
            timings["kill->new leader seen"] = time.monotonic() - t_kill
            new_st = agency.status(new_leader)
            assert new_st.status["term"] > first_term, (first_term, new_st)
            survivor = next(n for n in followers if n != new_leader)

            for i in range(8):
                revisions.append(write_and_check(agency, acked, f"/realnet/after/{i}", [i, "after"],
                                                 reader=survivor if i % 2 else new_leader))
            assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
            timings["writes after kill"] = time.monotonic() - t0

            paths = sorted(acked)
            for via in followers:
                r = agency.read(paths, timeout_s=10, via=via)
                assert r.status == OK, r
                assert r.result["values"] == [acked[p] for p in paths]
                assert r.result["revision"] >= revisions[-1]

            # Both survivors catch up with everything the leader committed.
            target = agency.status(new_leader).status["commit"]
            deadline = time.monotonic() + 5
            for n in followers:
                while True:
                    st = agency.status(n)
                    if st is not None and st.status["applied"] >= target:
                        break
                    assert time.monotonic() < deadline, (n, target, st)
                    time.sleep(0.05)

            leftovers = agency.shutdown()
            timings["shutdown done"] = time.monotonic() - t0
    finally:
        if leftovers is None:
            leftovers = agency.shutdown()
    assert leftovers == [], f"processes left after shutdown (then SIGKILLed): {leftovers}"
    for pid in list(peer_pids.values()) + list(agency.system_pids.values()):
        assert_gone(pid)
    print("realnet timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
