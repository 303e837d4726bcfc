"""The Dispatcher's subscriptions on topics with shard groups
(actors/dispatcher_gsubs.py), driven through its subscription mixins with
the agency and the shard leaders played by the test: a reset while no
consumer was attached is reported to the next one, and an acknowledgement
racing a reset never lands on the next group's records."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from actors.dispatcher_gsubs import DispatcherGroupSubs
from actors.dispatcher_subs import DispatcherSubs
from protocol.agency import AgencyReply, Read, Txn
from protocol.consume import AckRecords, Delivery, Subscribe, SubscribeReply
from protocol.frames import NO_SHARD_ID, AckRequest, AckResponse, SubscribeRequest, SubscribeResponse, SubscriptionReset
from protocol.frames import Delivery as DeliveryFrame
from protocol.groups import GroupList, ShardGroup, walks_path

TOPIC = "t/p/c/grouped"
LEADER = "leader-replica"  # the address the shard leaders answer from


def groups(*ids: int) -> GroupList:
    """Groups with these ids, one shard index: group g holds shard id g."""
    return GroupList(tuple(ShardGroup(g, 1000 * g, 1000 * (g + 1), (g,)) for g in ids), max(ids) + 1)


class Host(DispatcherGroupSubs, DispatcherSubs):
    """What the mixins use of the Dispatcher, with an in-memory agency."""

    def __init__(self, agency: dict[str, Any]) -> None:
        self.agency = agency  # path -> value, shared by the "nodes" of a test
        self.gl = groups(0, 1)
        self.topics = {TOPIC: {"shards": 1, "shard_group_ms": 1000}}
        self.boot = SimpleNamespace(node_id="n1", node="node-actor", listen=SimpleNamespace(request_timeout_s=10.0))
        self.subs: dict = {}
        self.conn_subs: dict = {}
        self.subscribe_waits: dict = {}
        self.frames: list[tuple[int, int, Any]] = []
        self.sent: list[tuple[Any, Any]] = []
        self.logged: list[tuple[str, str, dict]] = []
        self.hold = False  # True: agency calls wait in ``held`` until released one by one
        self.held: list[tuple[Any, Any]] = []

    def now(self) -> float:
        return 0.0

    def send(self, to: Any, msg: Any) -> None:
        self.sent.append((to, msg))

    def _frame(self, conn: int, corr: int, message: Any, answers: bool = True) -> None:
        self.frames.append((conn, corr, message))

    def log_event(self, level: str, event: str, **fields: Any) -> None:
        self.logged.append((level, event, fields))

    def record(self, kind: str, /, **fields: Any) -> None:
        pass

    def _group_list(self, topic: str) -> GroupList | None:
        return self.gl if topic == TOPIC else None

    def _agency(self, op: Any, on_reply: Any) -> None:
        if self.hold:
            self.held.append((op, on_reply))
            return
        self._answer(op, on_reply)

    def release_one(self) -> None:
        self._answer(*self.held.pop(0))

    def _answer(self, op: Any, on_reply: Any) -> None:
        if isinstance(op, Read):
            prefix = op.paths[0] + "/"
            tree = {p[len(prefix):]: v for p, v in self.agency.items() if p.startswith(prefix)}
            value = self.agency.get(op.paths[0], tree or None)  # a leaf's value, or the tree below
            on_reply(AgencyReply("c", 1, "ok", {"revision": 1, "values": [value]}))
        else:
            assert isinstance(op, Txn)
            for pre in op.preconditions:
                have = self.agency.get(pre.path)
                if (pre.kind, have is None) == ("absent", False) or (pre.kind == "equals" and have != pre.value):
                    on_reply(AgencyReply("c", 1, "ok", {"ok": False}))
                    return
            for mu in op.mutations:
                self.agency[mu.path] = mu.value
            on_reply(AgencyReply("c", 1, "ok", {"ok": True}))

    # -- the test's side
    def attach(self, conn: int, consumer: str = "c1") -> None:
        self._subscribe(conn, 7, SubscribeRequest(topic=TOPIC, subscription="s", consumer_id=consumer))

    def subscribed_to(self) -> list[str]:
        return [m.shard for _to, m in self.sent if isinstance(m, Subscribe)]

    def leader_answers(self, shard: int, conn: int, consumer: str = "c1", drained: bool = False) -> None:
        self.on_SubscribeReply(SubscribeReply(f"{TOPIC}#{shard}", "s", f"{consumer}@n1.{conn}", "ok",
                                              drained=drained), LEADER)

    def deliver(self, shard: int, conn: int, offsets: range, consumer: str = "c1") -> None:
        self.on_Delivery(Delivery(f"{TOPIC}#{shard}", "s", f"{consumer}@n1.{conn}",
                                  tuple((o, b"v%d" % o, False) for o in offsets)), LEADER)

    def ack(self, conn: int, offsets: tuple[int, ...], shard_id: int = NO_SHARD_ID, consumer: str = "c1") -> None:
        self._ack(conn, 9, AckRequest(topic=TOPIC, shard=0, subscription="s", consumer_id=consumer,
                                      offsets=offsets, shard_id=shard_id))

    def acks_sent(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(m.shard, m.offsets) for _to, m in self.sent if isinstance(m, AckRecords)]

    def resets(self, conn: int) -> list[SubscriptionReset]:
        return [m for c, _corr, m in self.frames if c == conn and isinstance(m, SubscriptionReset)]


def test_a_group_dropped_while_no_consumer_was_attached_is_reported_to_the_next_consumer() -> None:
    agency: dict[str, Any] = {}
    first = Host(agency)
    first.attach(conn=1)
    assert first.subscribed_to() == [f"{TOPIC}#0"]  # a new subscription starts at the oldest group
    assert agency == {walks_path(TOPIC, "s", 0): 0}  # ... and its position is recorded
    assert first.resets(1) == []
    first._closed(1)  # the consumer leaves before reading group 0 to its end

    # group 0 is dropped by retention while nobody is attached; the next
    # consumer (on another node) resumes at the oldest remaining record and is told
    later = Host(agency)
    later.gl = groups(1, 2)
    later.attach(conn=5, consumer="c2")
    assert later.subscribed_to() == [f"{TOPIC}#1"]
    [reset] = later.resets(5)
    assert (reset.shard, reset.dropped_shard_id, reset.next_shard_id) == (0, 0, 1), reset
    assert "dropped by retention" in reset.reason
    assert later.gsub_resets() == 1
    assert [(lvl, ev) for lvl, ev, f in later.logged if f.get("subscription") == "s"] == [
        ("warning", "subscription reset")]
    assert agency == {walks_path(TOPIC, "s", 0): 1}
    later._closed(5)

    # reported once: the one after that resumes at group 1 without a report
    third = Host(agency)
    third.gl = groups(1, 2)
    third.attach(conn=8, consumer="c3")
    assert third.subscribed_to() == [f"{TOPIC}#1"] and third.resets(8) == []


def test_a_subscription_that_moved_on_resumes_where_it_was_not_at_the_oldest_group() -> None:
    agency: dict[str, Any] = {}
    h = Host(agency)
    h.attach(conn=1)
    h.leader_answers(0, conn=1, drained=True)  # group 0 read to its end: on to group 1
    assert h.subscribed_to() == [f"{TOPIC}#0", f"{TOPIC}#1"] and agency == {walks_path(TOPIC, "s", 0): 1}
    h._closed(1)
    again = Host(agency)  # group 0 is still live, but this subscription is done with it
    again.attach(conn=2)
    assert again.subscribed_to() == [f"{TOPIC}#1"] and again.resets(2) == []


def test_a_slower_consumer_of_the_subscription_never_records_an_older_position() -> None:
    agency: dict[str, Any] = {}
    slow, fast = Host(agency), Host(agency)
    slow.hold = True  # the slow node's agency calls are late
    slow.attach(conn=2, consumer="b")
    slow.release_one()  # its read: nothing recorded yet; it attaches to group 0 ...
    assert slow.subscribed_to() == [f"{TOPIC}#0"] and len(slow.held) == 1  # ... and its write waits
    fast.attach(conn=1, consumer="a")
    fast.leader_answers(0, conn=1, consumer="a", drained=True)  # group 0 done: on to group 1
    assert agency == {walks_path(TOPIC, "s", 0): 1}
    slow.release_one()  # the slow write of group 0 arrives: refused (the record moved) ...
    slow.release_one()  # ... re-read: the record is ahead, nothing more to write
    assert slow.held == [] and agency == {walks_path(TOPIC, "s", 0): 1}
    slow.leader_answers(0, conn=2, consumer="b", drained=True)
    assert slow.held == []  # group 1 is recorded already: no write at all


def test_an_ack_racing_a_reset_is_discarded_not_applied_to_the_next_groups_records() -> None:
    h = Host({})
    h.attach(conn=1)
    h.leader_answers(0, conn=1)
    assert [m for _c, _k, m in h.frames if isinstance(m, SubscribeResponse)]
    h.deliver(0, conn=1, offsets=range(0, 5))  # records 0..4 of group 0's shard
    [d] = [m for _c, _k, m in h.frames if isinstance(m, DeliveryFrame)]
    assert (d.shard, d.shard_id) == (0, 0)  # the delivery names the shard its records came from
    # retention drops group 0 before the consumer acknowledged them: reset to group 1
    h.gl = groups(1, 2)
    h._gsub_view()
    assert len(h.resets(1)) == 1 and h.subscribed_to()[-1] == f"{TOPIC}#1"
    h.leader_answers(1, conn=1)
    h.deliver(1, conn=1, offsets=range(0, 3))  # records 0..2 of group 1's shard
    # the consumer's acks of group 0's records 0..4, sent before it saw the
    # reset, arrive now: they name shard 0 and go nowhere (before: offsets
    # 0..2 were acknowledged on group 1's shard, records never processed)
    h.ack(1, (0, 1, 2, 3, 4), shard_id=0)
    assert h.acks_sent() == [] and h.gsub_stale_acks() == 5  # (chorus_subscription_stale_acks_total)
    assert isinstance(h.frames[-1][2], AckResponse)
    # acks of group 1's records name shard 1 and are applied
    h.ack(1, (0, 1, 2), shard_id=1)
    assert h.acks_sent() == [(f"{TOPIC}#1", (0, 1, 2))]


def test_a_version_1_ack_without_a_shard_id_keeps_the_offset_filter() -> None:
    h = Host({})
    h.attach(conn=1)
    h.leader_answers(0, conn=1)
    h.deliver(0, conn=1, offsets=range(0, 5))
    h.gl = groups(1, 2)
    h._gsub_view()
    h.leader_answers(1, conn=1)
    h.deliver(1, conn=1, offsets=range(0, 3))
    h.ack(1, (0, 1, 2, 3, 4))  # no shard id: offsets above those delivered from shard 1 are dropped
    assert h.acks_sent() == [(f"{TOPIC}#1", (0, 1, 2))]
