"""The cluster route table and cross-node forwarding of the MQTT front end.

**Route table** (EMQX's design).  A node that has at least one local
subscriber for a filter registers the route ``filter -> node`` in the
agency (``/chorus/mqtt/routes/<node>/<escaped filter>``); every node keeps
the table in a :class:`~actors.mqtt_trie.TopicTrie`, loaded with one local
read of its agency peer and kept current by a watch on the prefix.  A
publish is forwarded only to the nodes whose routes match its topic.
Shared subscriptions (``$share/group/filter``) are routes too; a publish
picks one node of each matching group (round robin) and that node one of
its local members.

**Forwarding.**  Publishes for a node are queued per destination and sent
in batches (``MqttForward``, up to ``forward_batch_max`` publishes), at
most ``forward_window`` batches unacknowledged.  Batches of one origin
incarnation (``epoch``, persisted and increased at every boot) are
numbered per receiver incarnation (the receiver's epoch, learnt from its
first answer); the receiver delivers them once and in order and
acknowledges cumulatively; unacknowledged batches are sent again every
``forward_retry_s`` (go-back-N), so a partition delays publishes but loses
none while the queue (``forward_queue_max`` per destination, oldest
dropped beyond) holds them.  When the receiver restarted, what it had not
acknowledged is numbered afresh and sent again (at least once: a batch it
delivered just before it crashed is delivered twice).  A publisher's PUBACK waits for every
destination's acknowledgement, at most ``ack_wait_max_s``.
"""
from __future__ import annotations

import collections
from typing import Any, Callable
from urllib.parse import quote, unquote

from actors.mqtt_trie import TopicTrie
from protocol.mqtt import parse_shared
from protocol.mqtt_cluster import Fwd, MqttBugs, MqttForward, MqttTuning

RETRY_MAX_S = 3.0  # the longest wait between two resends of unacknowledged forward batches


def escape(name: str) -> str:
    """A topic or filter as one agency path segment ('/' and '%' escaped;
    the 't' keeps '.', '..' and '' from being segments of their own)."""
    return "t" + quote(name, safe="")


def unescape(segment: str) -> str:
    return unquote(segment[1:])


class Settle:
    """A publisher's acknowledgement waiting for ``left`` destinations."""

    __slots__ = ("left", "done", "deadline")

    def __init__(self, done: Callable[[], None], deadline: float) -> None:
        self.left = 1  # the publish itself; released by ``Settle.release`` at the end of routing
        self.done: Callable[[], None] | None = done
        self.deadline = deadline

    def add(self) -> None:
        self.left += 1

    def release(self) -> None:
        self.left -= 1
        if self.left <= 0 and self.done is not None:
            done, self.done = self.done, None
            done()

    def expire(self) -> None:
        if self.done is not None:
            done, self.done = self.done, None
            done()


class _Dest:
    __slots__ = ("queue", "inflight", "next_seq", "sent_at", "dropped", "dest_epoch", "retry_s", "sent_times",
                 "srtt", "rttvar")

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[Fwd, Settle | None]] = collections.deque()
        # seq -> the batch's (item, settle) pairs
        self.inflight: collections.OrderedDict[int, list[tuple[Fwd, Settle | None]]] = collections.OrderedDict()
        self.next_seq = 1
        self.sent_at = 0.0
        self.retry_s = 0.0  # 0: the timeout below; doubles after each retry without progress
        self.sent_times: dict[int, float] = {}  # seq -> when first sent (for round-trip samples)
        self.srtt = 0.0  # smoothed acknowledgement round trip and its variation (RFC 6298)
        self.rttvar = 0.0
        self.dropped = 0
        self.dest_epoch = 0  # the receiver's incarnation; 0 until it answers

    def timeout(self, floor_s: float) -> float:
        """How long an unacknowledged batch waits before it is sent again:
        at least ``floor_s``, more when the receiver is slow to answer."""
        return min(max(floor_s, self.srtt + 4 * self.rttvar), RETRY_MAX_S)

    def sample(self, rtt_s: float) -> None:
        if self.srtt == 0.0:
            self.srtt, self.rttvar = rtt_s, rtt_s / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt_s)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt_s

    def renumber(self, dest_epoch: int) -> None:
        """The receiver is a new incarnation: what it did not acknowledge goes
        back to the head of the queue, to be numbered from 1 again."""
        back = [pair for batch in self.inflight.values() for pair in batch]
        self.queue.extendleft(reversed(back))
        self.inflight.clear()
        self.sent_times.clear()
        self.next_seq = 1
        self.dest_epoch = dest_epoch


class RouteTable:
    """The cluster's routes as this node sees them, and the forward queues."""

    def __init__(self, node_id: str, tuning: MqttTuning, epoch: int) -> None:
        self.node_id = node_id
        self.tuning = tuning
        self.epoch = epoch
        self.trie = TopicTrie()  # real filter -> (node, group or "")
        self.routes: dict[str, set[str]] = {}  # node -> filters as subscribed
        self.rr: dict[tuple[str, str], int] = {}  # (group, filter) -> round-robin counter
        self.dests: dict[str, _Dest] = {}
        self.received: dict[str, tuple[int, int]] = {}  # origin -> (epoch, last delivered seq)
        # origin -> the highest seq of a batch that came before an earlier one (a gap: the origin resends)
        self.gaps: dict[str, int] = {}
        self.settles: list[Settle] = []
        self.retries = 0  # resends of unacknowledged forward batches
        self.bugs = MqttBugs()  # set by the shell from MqttBoot.bugs (the simulator's broken variants)

    # ------------------------------------------------------------- routes
    def add_route(self, node: str, flt: str) -> None:
        if flt in self.routes.setdefault(node, set()):
            return
        self.routes[node].add(flt)
        group, real = parse_shared(flt)
        self.trie.add(real, (node, group or ""))

    def remove_route(self, node: str, flt: str) -> None:
        filters = self.routes.get(node)
        if not filters or flt not in filters:
            return
        filters.discard(flt)
        if not filters:
            del self.routes[node]
        group, real = parse_shared(flt)
        self.trie.remove(real, (node, group or ""))

    def load(self, tree: dict) -> None:
        """Replace the table with the agency's ``routes`` subtree."""
        for node, filters in list(self.routes.items()):
            for flt in list(filters):
                self.remove_route(node, flt)
        for node, entries in (tree or {}).items():
            if isinstance(entries, dict):
                for seg in entries:
                    self.add_route(node, unescape(seg))

    def destinations(self, topic: str, local_groups: Callable[[str, str], bool]) -> tuple[set[str], dict]:
        """Nodes with a plain subscriber for ``topic``, and for each matching
        shared group (group, filter) the node chosen to serve it.
        ``local_groups(group, filter)`` says whether this node has a member."""
        nodes: set[str] = set()
        groups: dict[tuple[str, str], list[str]] = {}
        for flt, (node, group) in self.trie.match(topic):
            if group:
                groups.setdefault((group, flt), []).append(node)
            elif node != self.node_id:
                nodes.add(node)
        chosen: dict[tuple[str, str], str] = {}
        for key, members in groups.items():
            cands = sorted({m for m in members if m != self.node_id} |
                           ({self.node_id} if local_groups(*key) else set()))
            if cands:
                k = self.rr.get(key, 0)
                self.rr[key] = k + 1
                chosen[key] = cands[k % len(cands)]
        return nodes, chosen

    # ---------------------------------------------------------- forwarding
    def enqueue(self, node: str, item: Fwd, settle: Settle | None) -> None:
        d = self.dests.get(node)
        if d is None:
            d = self.dests[node] = _Dest()
        if settle is not None:
            settle.add()
        d.queue.append((item, settle))
        if len(d.queue) > self.tuning.forward_queue_max:
            _, s = d.queue.popleft()
            d.dropped += 1
            if s is not None:
                s.release()

    def flush(self, now: float, send: Callable[[str, Any], bool]) -> None:
        """Send what the windows allow; ``send(node, msg)`` is False when the
        node's address is not known yet (the batch is sent again on retry)."""
        t = self.tuning
        for node, d in self.dests.items():
            while d.queue and len(d.inflight) < t.forward_window:
                n = min(len(d.queue), t.forward_batch_max)
                batch = [d.queue.popleft() for _ in range(n)]
                seq = d.next_seq
                d.next_seq += 1
                if not d.inflight:
                    d.sent_at = now
                d.inflight[seq] = batch
                d.sent_times[seq] = now
                send(node, MqttForward(self.node_id, self.epoch, seq, tuple(f for f, _ in batch), d.dest_epoch))

    def acked(self, node: str, epoch: int, seq: int, now: float, dest_epoch: int = 0) -> None:
        d = self.dests.get(node)
        if d is None or epoch != self.epoch:
            return
        if dest_epoch != d.dest_epoch:
            if dest_epoch > d.dest_epoch:
                d.renumber(dest_epoch)  # a receiver we did not know yet, or one that restarted
            return
        if d.inflight and next(iter(d.inflight)) <= seq:
            d.sent_at = now  # progress: the retry clock restarts for what is left
            if d.retry_s == 0.0:  # no resend since: the sample is not ambiguous (Karn)
                d.sample(now - d.sent_times.get(seq, now))
            d.retry_s = 0.0
        while d.inflight:
            first = next(iter(d.inflight))
            if first > seq:
                break
            d.sent_times.pop(first, None)
            for _, s in d.inflight.pop(first):
                if s is not None:
                    s.release()

    def retry(self, now: float, send: Callable[[str, Any], bool]) -> None:
        """Send every unacknowledged batch again after ``forward_retry_s``."""
        if self.bugs.no_forward_retry:
            return
        for node, d in self.dests.items():
            wait_s = d.retry_s or d.timeout(self.tuning.forward_retry_s)
            if d.inflight and now - d.sent_at >= wait_s:
                # A busy receiver is not a lost one: each retry without progress
                # waits twice as long (up to RETRY_MAX_S), so a slow node is not
                # buried under copies of what it is still working through.
                d.sent_at = now
                d.retry_s = min(wait_s * 2, RETRY_MAX_S)
                self.retries += 1
                for seq, batch in d.inflight.items():
                    send(node, MqttForward(self.node_id, self.epoch, seq, tuple(f for f, _ in batch), d.dest_epoch))

    def drop_node(self, node: str) -> int:
        """Forget a dead node's routes and queued publishes; their
        publishers are acknowledged (the node's sessions are gone)."""
        for flt in list(self.routes.get(node, ())):
            self.remove_route(node, flt)
        d = self.dests.pop(node, None)
        if d is None:
            return 0
        pairs = list(d.queue) + [pair for batch in d.inflight.values() for pair in batch]
        for _, s in pairs:
            if s is not None:
                s.release()
        return len(pairs)

    def accept(self, msg: MqttForward) -> tuple[bool, int]:
        """Receiver side: (deliver this batch?, sequence to acknowledge; -1:
        none).  A batch for another incarnation of this node is answered
        with sequence 0 and this node's epoch (see ``MqttForward``)."""
        if msg.dest_epoch != self.epoch:
            return False, 0
        epoch, last = self.received.get(msg.origin, (0, 0))
        if msg.epoch < epoch:
            return False, -1  # a batch of an earlier incarnation of the origin
        if msg.epoch > epoch:
            epoch, last = msg.epoch, 0
            self.gaps.pop(msg.origin, None)
        if msg.seq == last + 1:
            self.received[msg.origin] = (epoch, msg.seq)
            if msg.seq >= self.gaps.get(msg.origin, 0):
                self.gaps.pop(msg.origin, None)
            return True, msg.seq
        if msg.seq > last + 1:
            self.gaps[msg.origin] = max(self.gaps.get(msg.origin, 0), msg.seq)  # an earlier batch is missing
        if self.bugs.no_forward_dedup and msg.seq <= last:
            return True, last
        self.received[msg.origin] = (epoch, last)
        return False, last  # a duplicate (already delivered) or a gap (the origin resends)

    def queued(self) -> dict[str, int]:
        return {n: len(d.queue) + sum(len(b) for b in d.inflight.values()) for n, d in self.dests.items()}
