"""The MQTT broker core on several nodes, wired together in memory: QoS
flows, sessions, takeover, retained messages, wills, the route table and
forwarding (the real-process tests with real clients are in
tests/test_mqtt_real.py; the simulator's runs in tests/test_mqtt_sim.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from actors.mqtt_core import MqttCore
from protocol.agency import Txn
from protocol.mqtt import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)
from protocol.mqtt_cluster import MqttForward, MqttTakeover, MqttTakeoverReply, MqttTuning
from storage.memory import MemoryDisk


class Net:
    """Cores of several nodes, an agency as a dict, connections as inboxes."""

    def __init__(self, nodes=("n1", "n2", "n3"), tuning: MqttTuning = MqttTuning(), down=()) -> None:
        self.now = 0.0
        self.tuning = tuning
        self.disks = {n: MemoryDisk() for n in nodes}
        self.agency: dict[str, object] = {}
        self.inbox: dict[tuple[str, str], list] = {}
        self.closed: set[tuple[str, str]] = set()
        self.cut: set[str] = set(down)  # nodes whose messages are lost
        self.agency_down = False  # every transaction fails (no leader)
        self.lose_answers = False  # transactions apply, but their answers are lost (a leader change)
        self.cores: dict[str, MqttCore] = {}
        self.epochs = {n: 0 for n in nodes}
        for n in nodes:
            self.boot(n)

    def boot(self, n: str) -> MqttCore:
        self.epochs[n] += 1
        core = MqttCore(n, self.tuning, self.disks[n].open("mqtt"), self.epochs[n])
        core.peers = sorted(m for m in self.disks if m != n)
        self.cores[n] = core
        core.agency_loaded(self._tree())
        self.pump()
        return core

    def _tree(self) -> dict:
        tree: dict = {}
        for path, value in self.agency.items():
            parts = path.split("/")[3:]
            d = tree
            for p in parts[:-1]:
                d = d.setdefault(p, {})
            d[parts[-1]] = value
        return tree

    def _apply(self, txn: Txn) -> list | None:
        """The transaction's change events; None when a precondition fails."""
        for pre in txn.preconditions:
            have = self.agency.get(pre.path)
            if pre.kind == "absent" and have is not None or pre.kind == "equals" and have != pre.value:
                return None
        events = []
        for m in txn.mutations:
            if m.kind == "set":
                self.agency[m.path] = m.value
                events.append((m.path, m.value))
            elif m.path in self.agency:
                del self.agency[m.path]
                events.append((m.path, None))
        return events

    def pump(self) -> None:
        for _ in range(100):
            busy = False
            for n, core in list(self.cores.items()):
                while core.txns:
                    txns, core.txns = core.txns, []
                    for txn, cb in txns:
                        busy = True
                        if self.agency_down:
                            cb(SimpleNamespace(status="fail", result=None))
                            continue
                        events = self._apply(txn)
                        for other in self.cores.values():
                            for path, value in events or ():
                                other.agency_event(path, value)
                        if self.lose_answers:
                            cb(SimpleNamespace(status="timeout", result=None))
                        else:
                            cb(SimpleNamespace(status="ok", result={"ok": events is not None}))
                sent: list = []
                core.routes.flush(self.now, lambda node, m: sent.append((node, m)) or True)
                sent += core.sends
                core.sends = []
                for node, m in sent:
                    busy = True
                    if n in self.cut or node in self.cut or node not in self.cores:
                        continue
                    self._deliver(n, node, m)
                for conn, packets in core.out.items():
                    self.inbox.setdefault((n, conn), []).extend(packets)
                    busy = busy or bool(packets)
                core.out = {}
                for conn in core.to_close:
                    self.closed.add((n, conn))
                core.to_close = set()
            if not busy:
                return
        raise AssertionError("no quiescence")

    def _deliver(self, src: str, dst: str, m) -> None:
        target = self.cores[dst]
        if isinstance(m, MqttForward):
            seq = target.forwarded(m, self.now)
            if seq >= 0:
                self.cores[src].routes.acked(dst, m.epoch, seq, self.now, target.routes.epoch)
        elif isinstance(m, MqttTakeover):
            reply = target.takeover(m, self.now)
            if reply is not None:
                self.cores[src].takeover_reply(reply, self.now)

    def send(self, node: str, conn: str, *packets) -> list:
        self.cores[node].packets(conn, list(packets), self.now)
        self.pump()
        return self.take(node, conn)

    def take(self, node: str, conn: str) -> list:
        return self.inbox.pop((node, conn), [])

    def tick(self, dt: float) -> None:
        self.now += dt
        for core in self.cores.values():
            core.tick(self.now)
            core.routes.retry(self.now, lambda node, m: core.sends.append((node, m)) or True)
        self.pump()

    def connect(self, node: str, conn: str, cid: str, clean: bool = True, will=None, keepalive=60) -> Connack:
        out = self.send(node, conn, Connect(cid, clean, keepalive, will))
        if not out:  # waiting for the other nodes' takeover answers
            self.tick(self.tuning.takeover_wait_s)
            out = self.take(node, conn)
        assert isinstance(out[0], Connack) and out[0].return_code == 0, out
        self.inbox[(node, conn)] = out[1:] + self.inbox.get((node, conn), [])  # for take()
        return out[0]


def pubs(packets) -> list[tuple[str, bytes, int]]:
    return [(p.topic, p.payload, p.qos) for p in packets if isinstance(p, Publish)]


def test_qos0_1_2_on_one_node_with_wildcards():
    net = Net(("n1",))
    net.connect("n1", "s", "sub")
    assert net.send("n1", "s", Subscribe(1, (("a/+/c", 2), ("a/#", 0)))) == [Suback(1, (2, 0))]
    net.connect("n1", "p", "pub")
    assert net.send("n1", "p", Publish("a/b/c", b"x", 0)) == []
    assert pubs(net.take("n1", "s")) == [("a/b/c", b"x", 0)]  # once, at the best matching QoS
    assert net.send("n1", "p", Publish("a/b/c", b"y", 1, packet_id=7)) == [Puback(7)]
    got = net.take("n1", "s")
    assert pubs(got) == [("a/b/c", b"y", 1)]
    net.send("n1", "s", Puback(got[0].packet_id))
    assert net.send("n1", "p", Publish("a/b/c", b"z", 2, packet_id=8)) == [Pubrec(8)]
    # a resend of the same QoS 2 packet before PUBREL is not delivered again
    assert net.send("n1", "p", Publish("a/b/c", b"z", 2, dup=True, packet_id=8)) == [Pubrec(8)]
    got = net.take("n1", "s")
    assert pubs(got) == [("a/b/c", b"z", 2)]
    assert net.send("n1", "s", Pubrec(got[0].packet_id)) == [Pubrel(got[0].packet_id)]
    assert net.send("n1", "s", Pubcomp(got[0].packet_id)) == []
    assert net.send("n1", "p", Pubrel(8)) == [Pubcomp(8)]
    assert pubs(net.send("n1", "p", Publish("x/y", b"none", 1, packet_id=9))) == []
    assert net.send("n1", "p", Pingreq()) == [Pingresp()]
    assert net.send("n1", "s", Unsubscribe(2, ("a/#", "a/+/c"))) == [Unsuback(2)]
    net.send("n1", "p", Publish("a/b/c", b"gone", 0))
    assert net.take("n1", "s") == []


def test_sys_topics_are_not_matched_by_wildcards_and_clients_cannot_publish_there():
    net = Net(("n1",))
    net.connect("n1", "s", "sub")
    net.send("n1", "s", Subscribe(1, (("#", 0), ("+/x", 0), ("$SYS/#", 0))))
    net.connect("n1", "p", "pub")
    assert net.send("n1", "p", Publish("$SYS/x", b"1", 1, packet_id=1)) == [Puback(1)]
    assert net.take("n1", "s") == []
    net.cores["n1"].publish("$SYS/x", b"2", 0, False, 0.0, None)
    net.pump()
    assert pubs(net.take("n1", "s")) == [("$SYS/x", b"2", 0)]  # only "$SYS/#" matched


def test_publish_is_forwarded_only_to_nodes_with_matching_routes():
    net = Net()
    net.connect("n2", "s", "sub")
    net.send("n2", "s", Subscribe(1, (("room/+/temp", 1),)))
    assert set(net.agency) == {"/chorus/mqtt/routes/n2/troom%2F%2B%2Ftemp"}
    assert net.cores["n1"].routes.routes == {"n2": {"room/+/temp"}}
    net.connect("n1", "p", "pub")
    assert net.send("n1", "p", Publish("room/1/temp", b"21", 1, packet_id=1)) == [Puback(1)]
    assert pubs(net.take("n2", "s")) == [("room/1/temp", b"21", 1)]
    sent = []
    net.cores["n1"].publish("room/1/humidity", b"x", 0, False, net.now, None)
    net.cores["n1"].routes.flush(net.now, lambda n, m: sent.append(n) or True)
    assert sent == []  # no route: nothing forwarded, to no node
    # the last subscriber leaves: the route goes
    net.send("n2", "s", Unsubscribe(2, ("room/+/temp",)))
    assert net.agency == {}
    assert net.cores["n1"].routes.routes == {}


def test_puback_waits_for_the_remote_node_and_a_partition_delays_but_loses_nothing():
    net = Net()
    net.connect("n2", "s", "sub")
    net.send("n2", "s", Subscribe(1, (("t", 1),)))
    net.connect("n1", "p", "pub")
    net.cut.add("n2")
    assert net.send("n1", "p", *[Publish("t", b"%d" % i, 1, packet_id=i + 1) for i in range(5)]) == []
    retry_s = net.tuning.forward_retry_s
    net.tick(retry_s)  # resent once, lost again: the next resend waits twice as long
    assert net.take("n1", "p") == [] and net.cores["n1"].routes.retries == 1
    net.tick(retry_s)
    assert net.cores["n1"].routes.retries == 1
    net.cut.clear()
    net.tick(retry_s)
    assert net.cores["n1"].routes.retries == 2
    assert sorted(p.packet_id for p in net.take("n1", "p")) == [1, 2, 3, 4, 5]
    got = pubs(net.take("n2", "s"))
    assert [g[1] for g in got] == [b"0", b"1", b"2", b"3", b"4"]  # in order, once


def test_puback_is_not_held_forever_by_an_unreachable_node():
    net = Net()
    net.connect("n2", "s", "sub")
    net.send("n2", "s", Subscribe(1, (("t", 1),)))
    net.connect("n1", "p", "pub")
    net.cut.add("n2")
    assert net.send("n1", "p", Publish("t", b"x", 1, packet_id=1)) == []
    net.tick(net.tuning.ack_wait_max_s + 0.1)
    assert net.take("n1", "p") == [Puback(1)]


def test_shared_subscription_balances_across_nodes_and_members():
    net = Net()
    for node, conn in (("n1", "a"), ("n2", "b"), ("n2", "c")):
        net.connect(node, conn, f"w-{conn}")
        net.send(node, conn, Subscribe(1, (("$share/g/jobs/#", 0),)))
    net.connect("n3", "p", "pub")
    for i in range(30):
        net.send("n3", "p", Publish("jobs/x", b"%d" % i, 0))
    counts = {c: len(pubs(net.take(n, c))) for n, c in (("n1", "a"), ("n2", "b"), ("n2", "c"))}
    assert sum(counts.values()) == 30  # each message to one member only
    assert counts["a"] == 15 and counts["b"] > 0 and counts["c"] > 0


def test_retained_is_replicated_delivered_on_subscribe_on_any_node_and_cleared():
    net = Net()
    net.connect("n1", "p", "pub")
    assert net.send("n1", "p", Publish("dev/1/state", b"on", 1, retain=True, packet_id=1)) == [Puback(1)]
    assert len([k for k in net.agency if "/retained/" in k]) == 1
    net.connect("n3", "s", "sub")
    out = net.send("n3", "s", Subscribe(1, (("dev/+/state", 1),)))
    assert out[0] == Suback(1, (1,))
    assert [(p.topic, p.payload, p.retain) for p in out[1:]] == [("dev/1/state", b"on", True)]
    net.send("n1", "p", Publish("dev/1/state", b"", 0, retain=True))
    assert not [k for k in net.agency if "/retained/" in k]
    net.connect("n2", "s2", "sub2")
    assert net.send("n2", "s2", Subscribe(1, (("dev/#", 0),))) == [Suback(1, (0,))]


def test_will_on_abrupt_close_and_keepalive_timeout_not_on_disconnect():
    net = Net(("n1", "n2"))
    net.connect("n2", "s", "sub")
    net.send("n2", "s", Subscribe(1, (("wills/#", 0),)))
    net.connect("n1", "a", "a", will=Will("wills/a", b"a died"))
    net.cores["n1"].closed("a", net.now)
    net.pump()
    assert pubs(net.take("n2", "s")) == [("wills/a", b"a died", 0)]
    net.connect("n1", "b", "b", will=Will("wills/b", b"b died"))
    net.send("n1", "b", Disconnect())
    assert net.take("n2", "s") == []
    net.connect("n1", "c", "c", will=Will("wills/c", b"c timed out"), keepalive=2)
    net.tick(2.0)
    assert net.take("n2", "s") == []
    net.tick(1.1)  # 1.5 x the keep-alive without a packet
    assert pubs(net.take("n2", "s")) == [("wills/c", b"c timed out", 0)]
    assert ("n1", "c") in net.closed


def test_persistent_session_queues_while_offline_and_survives_a_node_restart():
    net = Net(("n1", "n2"))
    assert net.connect("n2", "s", "keep", clean=False).session_present is False
    net.send("n2", "s", Subscribe(1, (("q/#", 1),)))
    net.cores["n2"].closed("s", net.now)
    net.connect("n1", "p", "pub")
    for i in range(3):
        net.send("n1", "p", Publish("q/x", b"%d" % i, 1, packet_id=i + 1))
        net.send("n1", "p", Publish("q/x", b"zero", 0))  # QoS 0 is not queued for an offline session
    net.boot("n2")  # the subscriber's node restarts: the session comes back from its store
    ack = net.connect("n2", "s2", "keep", clean=False)
    assert ack.session_present is True
    got = net.take("n2", "s2")
    assert [p.payload for p in got if isinstance(p, Publish)] == [b"0", b"1", b"2"]
    for p in got:
        net.send("n2", "s2", Puback(p.packet_id))
    net.send("n1", "p", Publish("q/y", b"after", 1, packet_id=9))  # the route was registered again
    assert pubs(net.take("n2", "s2")) == [("q/y", b"after", 1)]


def test_client_id_takeover_across_nodes_hands_the_session_over():
    net = Net()
    net.connect("n1", "old", "dev7", clean=False)
    net.send("n1", "old", Subscribe(1, (("cmd/dev7", 1),)))
    net.connect("n3", "p", "pub")
    net.send("n3", "p", Publish("cmd/dev7", b"first", 1, packet_id=1))
    assert pubs(net.take("n1", "old")) == [("cmd/dev7", b"first", 1)]  # not acknowledged by the client
    ack = net.connect("n2", "new", "dev7", clean=False)
    assert ack.session_present is True
    assert ("n1", "old") in net.closed
    got = net.take("n2", "new")
    assert pubs(got) == [("cmd/dev7", b"first", 1)]  # sent again by the new node
    assert net.agency == {"/chorus/mqtt/routes/n2/tcmd%2Fdev7": 1, "/chorus/mqtt/sessions/tdev7": "n2:2"}
    net.send("n3", "p", Publish("cmd/dev7", b"second", 1, packet_id=2))
    assert pubs(net.take("n2", "new")) == [("cmd/dev7", b"second", 1)]
    assert net.take("n1", "old") == []
    # a node whose route table has not caught up still sends to n1 (and to
    # n2): n1 passes it on, and the session gets it once
    net.cores["n3"].routes.add_route("n1", "cmd/dev7")
    net.send("n3", "p", Publish("cmd/dev7", b"third", 2, packet_id=3))
    assert pubs(net.take("n2", "new")) == [("cmd/dev7", b"third", 1)]
    net.cores["n3"].routes.remove_route("n2", "cmd/dev7")
    net.send("n3", "p", Publish("cmd/dev7", b"fourth", 1, packet_id=4))
    assert pubs(net.take("n2", "new")) == [("cmd/dev7", b"fourth", 1)]
    net.tick(net.tuning.moved_grace_s)
    net.send("n3", "p", Publish("cmd/dev7", b"late", 1, packet_id=5))
    assert net.take("n2", "new") == []  # the grace is over: n1 no longer passes it on
    net.cores["n3"].routes.remove_route("n1", "cmd/dev7")
    net.cores["n3"].routes.add_route("n2", "cmd/dev7")
    # a clean connect elsewhere discards the session
    assert net.connect("n1", "fresh", "dev7", clean=True).session_present is False
    assert net.agency == {}


def test_takeover_on_the_same_node_closes_the_first_connection():
    net = Net(("n1",))
    net.connect("n1", "c1", "same")
    net.connect("n1", "c2", "same")
    assert ("n1", "c1") in net.closed
    net.send("n1", "c2", Subscribe(1, (("a", 0),)))
    assert pubs(net.send("n1", "c2", Publish("a", b"x", 0))) == [("a", b"x", 0)]  # its own subscription


def test_routes_of_a_dead_node_are_removed_and_it_registers_them_again():
    net = Net()
    net.connect("n2", "s", "sub", clean=False)
    net.send("n2", "s", Subscribe(1, (("a", 1),)))
    net.cores["n1"].nodes_dead(["n2"])
    net.pump()
    # n2 saw its route deleted and said it again
    assert net.agency == {"/chorus/mqtt/routes/n2/ta": 1, "/chorus/mqtt/sessions/tsub": "n2:1"}
    assert net.cores["n3"].routes.routes == {"n2": {"a"}}


def test_inflight_window_and_queue_bound():
    net = Net(("n1",), MqttTuning(inflight_max=2, session_queue_max=3))
    net.connect("n1", "s", "sub")
    net.send("n1", "s", Subscribe(1, (("t", 1),)))
    net.connect("n1", "p", "pub")
    for i in range(7):
        net.send("n1", "p", Publish("t", b"%d" % i, 1, packet_id=i + 1))
    got = net.take("n1", "s")
    assert [p.payload for p in got] == [b"0", b"1"]  # the window
    s = net.cores["n1"].sessions["sub"]
    assert len(s.queue) == 3 and s.dropped == 2  # the oldest queued were dropped
    more = net.send("n1", "s", Puback(got[0].packet_id))
    assert [p.payload for p in more] == [b"4"]


def test_forward_retry_waits_longer_for_a_receiver_that_answers_slowly():
    from actors.mqtt_routes import RouteTable
    from protocol.mqtt_cluster import Fwd

    rt = RouteTable("n1", MqttTuning(forward_retry_s=1.0), epoch=1)
    sent: list = []
    rt.routes["n2"] = {"t"}
    rt.dests.clear()
    rt.enqueue("n2", Fwd("t", b"1", 1, "m1"), None)
    rt.flush(0.0, lambda n, m: sent.append(m) or True)
    rt.acked("n2", 1, 0, 0.1, dest_epoch=7)  # the receiver names its incarnation; the batch goes again
    rt.flush(0.1, lambda n, m: sent.append(m) or True)
    rt.acked("n2", 1, sent[-1].seq, 1.6, dest_epoch=7)  # answered after 1.5 s
    rt.enqueue("n2", Fwd("t", b"2", 1, "m2"), None)
    rt.flush(2.0, lambda n, m: sent.append(m) or True)
    before = len(sent)
    rt.retry(3.5, lambda n, m: sent.append(m) or True)
    assert len(sent) == before and rt.retries == 0  # 1.5 s is this receiver's normal answer time
    rt.retry(7.0, lambda n, m: sent.append(m) or True)
    assert len(sent) == before + 1 and rt.retries == 1


def test_retained_follows_the_agencys_events_for_each_leaf():
    """The agency stores {"p": ..., "q": ...} as two leaves: a watch reports
    .../<topic>/p and .../<topic>/q, and a delete of both (found by the
    simulator: other nodes' retained messages never reached a node)."""
    import base64

    core = Net(("n1",)).cores["n1"]
    seg = "/chorus/mqtt/retained/tdev%2F1"
    core.agency_event(seg + "/p", base64.b64encode(b"on").decode())
    core.agency_event(seg + "/q", 1)
    assert core.retained == {"dev/1": (b"on", 1)}
    core.agency_event(seg + "/p", None)
    core.agency_event(seg + "/q", None)
    assert core.retained == {}


def test_a_qos2_publish_sent_again_after_a_takeover_is_not_published_twice():
    """The packet ids of QoS 2 publishes received and not yet released go
    with the session to the node that takes it over (found by the
    simulator: a PUBREC lost with the connection, the DUP resend on the new
    node was delivered a second time)."""
    net = Net()
    net.connect("n2", "s", "sub")
    net.send("n2", "s", Subscribe(1, (("t", 2),)))
    net.connect("n1", "p1", "pub", clean=False)
    assert net.send("n1", "p1", Publish("t", b"once", 2, packet_id=7)) == [Pubrec(7)]
    assert pubs(net.take("n2", "s")) == [("t", b"once", 2)]
    assert net.connect("n3", "p2", "pub", clean=False).session_present is True
    assert net.send("n3", "p2", Publish("t", b"once", 2, dup=True, packet_id=7)) == [Pubrec(7)]
    assert net.take("n2", "s") == []
    assert net.send("n3", "p2", Pubrel(7)) == [Pubcomp(7)]


def test_a_publish_is_passed_on_a_bounded_number_of_times():
    """Two sessions that moved in opposite directions made each publish
    matching both go round between their old nodes; and a session that moved
    on again before a passed-on publish reached it missed that publish (both
    found by the simulator).  A publish follows moves up to PASS_HOPS_MAX
    times."""
    from protocol.mqtt_cluster import PASS_HOPS_MAX, Fwd

    net = Net(("n1", "n2"))
    core = net.cores["n1"]
    core.moved.add("t", ("c", "n2"))
    core.forwarded(MqttForward("n2", net.epochs["n2"], 1, (Fwd("t", b"x", 1, "n2.1.1", (), PASS_HOPS_MAX),),
                               core.routes.epoch), net.now)
    assert core.routes.queued() == {}
    core.forwarded(MqttForward("n2", net.epochs["n2"], 2, (Fwd("t", b"y", 1, "n2.1.2", (), PASS_HOPS_MAX - 1),),
                               core.routes.epoch), net.now)
    assert core.routes.queued() == {"n2": 1}
    core.forwarded(MqttForward("n2", net.epochs["n2"], 3, (Fwd("t", b"z", 1, "n2.1.3"),), core.routes.epoch),
                   net.now)
    assert core.routes.queued() == {"n2": 2}


def test_the_duplicate_filter_goes_with_the_session():
    """A publish the session had on its old node and that reaches that node
    again (a late forward) is passed on, and dropped by the new node (found
    by the simulator: the mids the session had were not handed over)."""
    from protocol.mqtt_cluster import Fwd

    net = Net()
    net.connect("n1", "old", "dev", clean=False)
    net.send("n1", "old", Subscribe(1, (("t", 1),)))
    net.connect("n3", "p", "pub")
    net.send("n3", "p", Publish("t", b"m", 1, packet_id=1))
    got = net.take("n1", "old")
    assert pubs(got) == [("t", b"m", 1)]
    net.send("n1", "old", Puback(got[0].packet_id))
    mid = net.cores["n1"].sessions["dev"].recent_mids()[-1]
    assert net.connect("n2", "new", "dev", clean=False).session_present is True
    assert net.take("n2", "new") == []
    net.cores["n1"]._pass_on(Fwd("t", b"m", 1, mid), None)
    net.pump()
    assert net.take("n2", "new") == []


def test_a_route_of_ours_that_the_boot_read_missed_is_deleted_when_no_session_needs_it():
    """After a restart the front reads the agency from its local peer, which
    may not have caught up yet; its own routes from before come later, in
    the watch (found by the simulator: a route of a session long taken over
    stayed in the agency forever)."""
    core = Net(("n1",)).cores["n1"]
    core.agency_event("/chorus/mqtt/routes/n1/tgone%2F%23", 1)
    core.tick(1.0)
    assert [(t.mutations[0].path, t.mutations[0].kind) for t, _ in core.txns] == [
        ("/chorus/mqtt/routes/n1/tgone%2F%23", "delete")]


def test_a_session_whose_node_is_cut_off_is_not_replaced_while_that_node_may_return():
    """The registry (actors/mqtt_owners.py) names one owner per session.  A
    CONNECT elsewhere fetches the state from it; while it does not answer
    and is not known dead, the CONNECT is refused rather than given a fresh
    session the client might take for its own."""
    net = Net()
    net.connect("n1", "c1", "dev", clean=False)
    net.send("n1", "c1", Subscribe(1, (("old/#", 1),)))
    net.cut.add("n1")
    net.send("n2", "c2", Connect("dev", False, 60))
    net.tick(net.tuning.claim_wait_s / 2)
    assert net.take("n2", "c2") == []  # still trying
    net.tick(net.tuning.claim_wait_s)
    assert net.take("n2", "c2") == [Connack(False, 3)] and ("n2", "c2") in net.closed  # server unavailable
    assert net.agency["/chorus/mqtt/sessions/tdev"] == "n1:1"  # n1 still holds it
    net.cut.clear()
    ack = net.connect("n3", "c3", "dev", clean=False)  # n1 answers again: the session moves, intact
    assert ack.session_present is True
    assert set(net.cores["n3"].sessions["dev"].subs) == {"old/#"}
    assert net.agency["/chorus/mqtt/sessions/tdev"] == "n3:2"
    assert "dev" not in net.cores["n1"].sessions  # dropped once n3's claim committed


def test_a_session_on_a_dead_node_is_started_afresh_and_the_stale_copy_never_resumed():
    net = Net()
    net.connect("n1", "c1", "dev", clean=False)
    net.send("n1", "c1", Subscribe(1, (("old/#", 1),)))
    net.cut.add("n1")
    net.cores["n2"].unseen = {"n1": net.tuning.route_dead_after_s + 1}  # the supervisor gave n1 up
    ack = net.connect("n2", "c2", "dev", clean=False)
    assert ack.session_present is False  # what n1 held is lost with it
    assert ("n1", "c1") in net.closed  # n1 saw the registry name n2 and let its client go
    net.send("n2", "c2", Subscribe(1, (("new/#", 1),)))
    net.cut.clear()
    ack = net.connect("n3", "c3", "dev", clean=False)
    assert ack.session_present is True
    assert set(net.cores["n3"].sessions["dev"].subs) == {"new/#"}  # n2's session, not n1's stale one
    net.tick(net.tuning.moved_grace_s)
    assert "dev" not in net.cores["n1"].sessions and "dev" not in net.cores["n2"].sessions


def test_a_restarted_node_keeps_only_the_sessions_the_registry_gives_it():
    net = Net(("n1", "n2"))
    net.connect("n1", "c1", "dev", clean=False)
    net.send("n1", "c1", Subscribe(1, (("x", 1),)))
    net.cut.add("n1")
    net.cores["n2"].unseen = {"n1": net.tuning.route_dead_after_s + 1}
    net.connect("n2", "c2", "dev", clean=False)
    net.cut.clear()
    net.boot("n1")  # its store still has the session; the registry says n2
    # kept for a while (a restarted agency peer may not have caught up yet), then dropped
    assert "dev" in net.cores["n1"].sessions
    net.tick(0.1)
    net.tick(net.tuning.moved_grace_s)
    assert "dev" not in net.cores["n1"].sessions
    assert not [k for k in net.agency if k.startswith("/chorus/mqtt/routes/n1/")]


def test_takeover_keeps_the_packet_ids_of_unacknowledged_messages():
    net = Net()
    net.connect("n1", "old", "dev", clean=False)
    net.send("n1", "old", Subscribe(1, (("t", 2),)))
    net.connect("n3", "p", "pub")
    net.send("n3", "p", Publish("t", b"a", 2, packet_id=1))
    net.send("n3", "p", Publish("t", b"b", 1, packet_id=2))
    got = net.take("n1", "old")
    a, b = [p for p in got if isinstance(p, Publish)]
    assert net.send("n1", "old", Pubrec(a.packet_id)) == [Pubrel(a.packet_id)]  # a: the client has it
    net.connect("n2", "new", "dev", clean=False)
    again = net.take("n2", "new")
    # a: released again under its id (the client holds it until PUBREL); b: sent again with DUP, same id
    assert Pubrel(a.packet_id) in again
    assert [(p.payload, p.packet_id, p.dup) for p in again if isinstance(p, Publish)] == [(b"b", b.packet_id, True)]
    net.send("n3", "p", Publish("t", b"c", 2, packet_id=3))
    c = [p for p in net.take("n2", "new") if isinstance(p, Publish)][0]
    assert c.packet_id not in (a.packet_id, b.packet_id)  # a new message never reuses a held id


def test_a_retained_publish_is_acknowledged_only_once_the_agency_stored_it():
    net = Net(("n1", "n2"))
    net.connect("n1", "p", "pub")
    net.agency_down = True
    assert net.send("n1", "p", Publish("dev/state", b"on", 1, retain=True, packet_id=1)) == []
    net.tick(1.0)
    assert net.take("n1", "p") == [] and net.cores["n1"].retained == {}
    net.agency_down = False
    net.tick(0.1)  # tried again
    assert net.take("n1", "p") == [Puback(1)]
    assert all(c.retained == {"dev/state": (b"on", 1)} for c in net.cores.values())
    net.agency_down = True
    net.send("n1", "p", Publish("dev/state", b"off", 1, retain=True, packet_id=2))
    net.tick(net.tuning.claim_wait_s + 0.1)
    net.agency_down = False
    net.tick(0.1)
    assert net.take("n1", "p") == []  # gave up: never acknowledged, the client sends it again
    assert all(c.retained == {"dev/state": (b"on", 1)} for c in net.cores.values())


def test_packet_ids_of_a_persistent_session_survive_a_restart_of_its_node():
    """MQTT-4.4.0-1: after a reconnect the server re-sends unacknowledged
    PUBLISH and PUBREL packets with their original packet ids -- also when
    its node restarted in between (the ids are in the session's store)."""
    net = Net(("n1",))
    net.connect("n1", "s", "dev", clean=False)
    net.send("n1", "s", Subscribe(1, (("t", 2),)))
    net.connect("n1", "p", "pub")
    net.send("n1", "p", Publish("t", b"a", 2, packet_id=1))
    net.send("n1", "p", Publish("t", b"b", 1, packet_id=2))
    a, b = [p for p in net.take("n1", "s") if isinstance(p, Publish)]
    net.send("n1", "s", Pubrec(a.packet_id))
    net.boot("n1")
    net.connect("n1", "s2", "dev", clean=False)
    again = net.take("n1", "s2")
    assert again[0] == Pubrel(a.packet_id)
    assert [(p.payload, p.packet_id, p.dup) for p in again[1:]] == [(b"b", b.packet_id, True)]


def test_a_restored_session_drops_a_late_copy_of_a_message_it_restored():
    """A message in a persistent session's store when its node restarts is
    delivered from there; a copy still on its way (passed on by the node the
    session was at before) must not reach the client as a second message
    (found by the simulator: QoS 2 delivered twice in one session)."""
    from protocol.mqtt_cluster import Fwd

    net = Net(("n1", "n2"))
    _queued_while_offline(net, "n2", "n1", b"once", 2)
    mid = net.cores["n2"].sessions["dev"].recent_mids()[0]
    net.boot("n2")
    net.connect("n2", "s2", "dev", clean=False)
    got = net.take("n2", "s2")
    assert pubs(got) == [("t", b"once", 2)]
    net.cores["n1"].moved.add("t", ("dev", "n2"))
    net.cores["n1"]._pass_on(Fwd("t", b"once", 2, mid), None)
    net.pump()
    assert net.take("n2", "s2") == []


def test_a_connect_the_client_gave_up_on_takes_nothing():
    """A client whose CONNECT waits on a node cut off from the session's
    owner gives up and connects elsewhere; the abandoned attempt must not go
    on to take the session from the connection the client has now (found by
    the simulator: the later connection was closed and its messages went
    round after the session)."""
    net = Net()
    net.connect("n1", "s", "dev", clean=False)
    net.send("n1", "s", Subscribe(1, (("t", 1),)))
    net.cores["n1"].closed("s", net.now)
    net.cut.add("n1")
    assert net.send("n2", "a", Connect("dev", False, 10)) == []  # fetching from n1: no answer yet
    net.cores["n2"].closed("a", net.now)
    net.cut.clear()
    assert net.connect("n3", "b", "dev", clean=False).session_present is True
    for _ in range(5):
        net.tick(net.tuning.takeover_wait_s)
    assert net.agency["/chorus/mqtt/sessions/tdev"].startswith("n3:")
    assert ("n3", "b") not in net.closed
    net.connect("n2", "p", "pub")
    net.send("n2", "p", Publish("t", b"still here", 1, packet_id=1))
    assert pubs(net.take("n3", "b")) == [("t", b"still here", 1)]


def test_a_persistent_session_offline_past_its_expiry_ends_with_its_registry_entry():
    """The session-owner registry holds one entry per persistent client id:
    one that never comes back must not hold it forever."""
    net = Net(("n1", "n2"), tuning=MqttTuning(session_expiry_s=60, session_expiry_scan_s=10))
    net.connect("n1", "s", "gone", clean=False)
    net.send("n1", "s", Subscribe(1, (("t", 1),)))
    net.connect("n1", "k", "kept", clean=False)  # stays connected: never expires
    net.cores["n1"].closed("s", net.now)
    net.connect("n2", "p", "pub")
    net.send("n2", "p", Publish("t", b"queued", 1, packet_id=1))
    for _ in range(5):
        net.tick(10)
    assert "/chorus/mqtt/sessions/tgone" in net.agency  # 50 s offline: still there
    for _ in range(3):
        net.tick(10)
    assert "/chorus/mqtt/sessions/tgone" not in net.agency
    assert "gone" not in net.cores["n1"].sessions
    assert not [k for k in net.agency if k.startswith("/chorus/mqtt/routes/n1/")]  # its route went with it
    assert net.agency["/chorus/mqtt/sessions/tkept"].startswith("n1:")
    assert net.connect("n1", "s2", "gone", clean=False).session_present is False


def test_a_registry_entry_for_a_session_this_node_does_not_have_is_released():
    net = Net(("n1", "n2"))
    net.connect("n1", "s", "ghost", clean=False)
    net.cores["n1"].closed("s", net.now)
    net.cores["n1"]._discard(net.cores["n1"].sessions["ghost"])  # e.g. expired while the agency was down
    assert "/chorus/mqtt/sessions/tghost" in net.agency
    net.tick(net.tuning.session_expiry_scan_s)
    assert "/chorus/mqtt/sessions/tghost" not in net.agency


def test_a_claim_whose_answer_is_lost_keeps_the_session():
    """The agency applied the claim, but its answer was lost: the registry
    names this node at the claimed epoch, so the claim committed; starting
    over must not make the session anew (found by the simulator: queued
    messages lost and a "present" CONNACK for an empty session)."""
    net = Net(("n1", "n2"))
    _queued_while_offline(net, "n1", "n2", b"queued", 1)
    net.lose_answers = True
    assert net.send("n1", "s2", Connect("dev", False, 10)) == []  # claimed; the answer is lost
    net.lose_answers = False
    net.tick(net.tuning.tick_s)
    got = net.take("n1", "s2")
    assert got[0] == Connack(True, 0)
    assert pubs(got[1:]) == [("t", b"queued", 1)]


def test_a_session_drops_copies_of_its_latest_messages_and_forgets_old_ones():
    from actors.mqtt_session import Msg, Session

    s = Session("c", True, None, inflight_max=100, queue_max=100, recent_max=8)
    s.conn = "conn"
    out: list = []
    for i in range(20):
        s.offer(Msg("t", b"%d" % i, 0, f"n1.1.{i}"), out)
    assert len(out) == 20
    for i in (19, 18, 17, 16):  # the latest recent_max / 2 at least: dropped as copies
        s.offer(Msg("t", b"%d" % i, 0, f"n1.1.{i}"), out)
    assert len(out) == 20
    s.offer(Msg("t", b"0", 0, "n1.1.0"), out)  # long forgotten: delivered again
    assert len(out) == 21
    assert s.recent_mids()[-1] == "n1.1.0" and len(s.recent_mids()) <= 8


def _queued_while_offline(net: Net, sub_node: str, pub_node: str, payload: bytes, qos: int) -> None:
    """Client "dev" has a persistent session on ``sub_node`` subscribed to
    "t", is offline, and one message from ``pub_node`` is queued for it."""
    net.connect(sub_node, "s", "dev", clean=False)
    net.send(sub_node, "s", Subscribe(1, (("t", qos),)))
    net.cores[sub_node].closed("s", net.now)
    net.connect(pub_node, "p", "pub")
    net.send(pub_node, "p", Publish("t", payload, qos, packet_id=1))
