"""Checkers for the MQTT front end (route table, forwarding, sessions).

Inputs: the history of a run -- the simulated clients' ``mqttc.*`` records
(see :mod:`sim.mqtt_client`), the nodes' ``mqtt.connected``, and the
``mqtt.routes``, ``mqtt.session_gone`` and ``mqtt.handover`` records of
``ObservedMqttFront``, and the crashes -- and every node's final state
after the liveness phase, in which every fault was healed
(:class:`MqttFinal`).

Terms.  A *message* is one publish of a publisher ``P``, payload
``P|topic|seq``.  It is *acknowledged* when ``P`` got its PUBACK (QoS 1) or
PUBREC (QoS 2: the broker owns it from then on).  ``t_send`` is when ``P``
sent the copy the broker routed -- for QoS 1 the copy acknowledged; for
QoS 2 the first copy sent into the session that acknowledged it (a resend
is answered from the packet ids that session holds) -- to node ``O``, and
``t_ack`` when the acknowledgement arrived.  An acknowledgement is *on
time* when it came within ``ack_wait_max_s`` of ``t_send`` (so ``O`` had
every destination's acknowledgement and every destination had stored the
message); otherwise ``O`` may have answered on its deadline with the
message still in its forward queue.

A *lineage* is one broker-side session followed from node to node: it is
born where a CONNACK says "session not present", and goes on where a node
resumes it -- its own (after a reconnection or a restart, from its store)
or one another node handed over in a takeover.  A subscriber's *epoch*
runs from a CONNACK saying "not present" to the next one (the client then
forgets the QoS 2 ids it held); its *final epoch* is the one running at
the end.  A session *lives on* node ``D`` from a ``mqtt.connected`` record
of ``D`` for that client until one of another node.

``mqtt_at_least_once``
    Every acknowledged QoS 1/2 message reaches a subscriber ``S`` in its
    final epoch when all of these hold -- what the design promises, no
    more:

    1. ``S``'s final epoch began before ``t_send``, and ``S`` had a SUBACK
       in it, before ``t_send``, granting QoS 1 or 2 for a filter matching
       the topic;
    2. ``S``'s session lived on one node ``D`` from before ``t_send`` to
       ``W + takeover_wait_s``, where ``W`` is ``t_ack`` for an
       acknowledgement on time and the end of the run otherwise (a batch
       that reaches ``D`` after the session left is passed on for
       ``moved_grace_s`` only);
    3. if ``O`` is not ``D``: ``O``'s route table held a route of ``D``
       for a filter matching the topic from ``t_send`` until the broker
       routed it (routes reach the other nodes through the agency's watch:
       a publish routed before its node heard of the subscription is not
       forwarded, as in EMQX);
    4. for an acknowledgement not on time: ``O`` did not crash after
       ``t_send`` (its forward queue is memory).

    The subscriber's own node may crash: sessions and their queues are
    synced before any acknowledgement (``MqttFront._flush``) and come back
    with the node.  A session the broker could not hand over (its node was
    down or cut off) is new; its CONNACK says so, the epoch ends, and only
    messages published after it count.
``mqtt_exactly_once``
    A QoS 2 message delivered at QoS 2 reaches the application at most
    once per session -- one lineage within one epoch -- except (the
    documented limit: packet ids are not persisted) when a node holding
    the subscriber's session crashed between the two copies, or the
    publisher's between its sends, or the publisher sent it again into
    another session than the first (a new one, or another lineage: two
    messages by MQTT's rules).  Copies of retained messages sent on
    SUBSCRIBE do not count.
``mqtt_single_session``
    A CONNACK that says the session is present resumes the lineage of the
    client's previous connection.  It fails when a node that was out of
    reach while the client moved kept the old session, and a later
    takeover handed that one over instead of the one the client had.
``mqtt_order``
    Per subscriber, publisher and topic, the first deliveries (not counting
    retained copies) of the messages ``mqtt_at_least_once`` requires, that
    were acknowledged on time and sent only once, follow the publisher's
    order.
``mqtt_routes_converge``
    After the liveness phase every node runs and has loaded the route
    table; its table of the other nodes' routes equals the agency's, and
    the agency's routes of each node are the filters of that node's
    sessions.
``mqtt_retained_converge``
    Every node's retained messages equal the agency's, and each retained
    payload in the agency was published to its topic with the retain flag.
``mqtt_liveness``
    Every subscriber connected, subscribed and is connected at the end,
    and some message acknowledged after the heal was delivered.

``stats``: messages acknowledged, (message, subscriber) pairs required and
delivered, and how many each rule excused.
"""
from __future__ import annotations

import base64
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from actors.mqtt_routes import unescape
from actors.mqtt_trie import TopicTrie
from sim.history import Record, Violation

MAX_VIOLATIONS = 20
IN_FLIGHT_S = 1.0  # longer than any message takes between nodes in the shipped scenarios
NAMES = ("mqtt_at_least_once", "mqtt_exactly_once", "mqtt_single_session", "mqtt_order", "mqtt_routes_converge",
         "mqtt_retained_converge", "mqtt_liveness")


@dataclass
class MqttFinal:
    """State after the liveness phase: ``nodes[n]`` is None for a node
    whose front is not running, else {"routes": {node: {filter}}, "loaded":
    bool, "filters": {filter of its sessions}, "retained": {topic: (payload,
    qos)}}; ``agency`` is the leader's ``/chorus/mqtt`` subtree."""

    end_t: float
    leader: str | None = None
    agency: dict = field(default_factory=dict)
    nodes: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=4096)
def _matches(flt: str, topic: str) -> bool:
    trie = TopicTrie()
    trie.add(flt, 0)
    return trie.has_match(topic)


class _Intervals:
    """A value per time, from (t, value) changes in time order."""

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.vs: list[Any] = []

    def set(self, t: float, v: Any) -> None:
        self.ts.append(t)
        self.vs.append(v)

    def at(self, t: float) -> Any:
        i = bisect_right(self.ts, t)
        return self.vs[i - 1] if i else None

    def between(self, a: float, b: float) -> list[Any]:
        """The value at ``a`` and every value set in (a, b]."""
        i = bisect_right(self.ts, a)
        j = bisect_right(self.ts, b)
        return ([self.vs[i - 1]] if i else [None]) + self.vs[i:j]


def check_mqtt(history: list[Record], final: MqttFinal, tuning: Any, heal_t: float, subscribers: list[str]
               ) -> tuple[dict[str, list[Violation]], dict[str, Any]]:
    out: dict[str, list[Violation]] = {k: [] for k in NAMES}
    stats: dict[str, Any] = {"acked": 0, "required": 0, "delivered": 0, "excused": {}}
    ack_wait = tuning.ack_wait_max_s * 0.98  # clock drift: never call an acknowledgement early
    takeover_wait = tuning.takeover_wait_s + 0.05

    connacks: dict[str, list[tuple[float, str, str, bool]]] = {}  # client -> (t, conn, node, present)
    subacks: dict[str, list[tuple[float, tuple]]] = {}
    sends: dict[tuple[str, int], list[tuple[float, str, str, bool]]] = {}  # (P, seq) -> (t, conn, node, dup)
    info: dict[tuple[str, int], tuple[str, int, bool]] = {}  # (P, seq) -> (topic, qos, retain)
    acks: dict[tuple[str, int], tuple[float, str, str]] = {}
    delivers: dict[str, list[tuple[float, str, int, bool, str]]] = {}  # S -> (t, payload, qos, retain, conn)
    located: dict[str, list[tuple[float, str]]] = {}  # client -> (t, node) of mqtt.connected
    tables: dict[str, _Intervals] = {}
    crashes: dict[str, list[float]] = {}
    conn_present: dict[str, bool] = {}
    # Session lineages: a session is born where a CONNACK says "not present" and goes on where a
    # node resumes it (its own, restored after a restart, or handed over by the node that had it).
    lineages: list[tuple[str, str, float]] = []  # lineage id - 1 -> (client, node, t) where it was born
    holder: dict[tuple[str, str], int] = {}  # (client, node) -> lineage of the session that node holds
    gone: dict[tuple[str, str, str], int | None] = {}  # (client, node, to) -> lineage it gave up to ``to``
    conn_lineage: dict[str, int] = {}
    fresh: dict[tuple[str, str], int] = {}  # (client, node) -> lineage of a fresh claim not yet connected

    def new_lineage(client: str, node: str, t: float) -> int:
        lineages.append((client, node, t))
        return len(lineages)

    for r in history:
        k = r.kind
        if not (k.startswith("mqtt") or k == "sim.crash"):
            continue
        f = r.fields
        if k == "mqttc.publish":
            key = (f["client"], f["seq"])
            sends.setdefault(key, []).append((r.t, f["conn"], f["node"], f["dup"]))
            info[key] = (f["topic"], f["qos"], f["retain"])
        elif k == "mqttc.acked":
            acks.setdefault((f["client"], f["seq"]), (r.t, f["conn"], f["node"]))
        elif k == "mqttc.deliver":
            delivers.setdefault(f["client"], []).append((r.t, f["payload"], f["qos"], f["retain"], f["conn"]))
        elif k == "mqttc.connack":
            if f["code"] == 0:
                connacks.setdefault(f["client"], []).append((r.t, f["conn"], f["node"], f["present"]))
                conn_present[f["conn"]] = f["present"]
                conn_lineage[f["conn"]] = holder.get((f["client"], f["node"])) or new_lineage(
                    f["client"], f["node"], r.t)
        elif k == "mqttc.suback":
            subacks.setdefault(f["client"], []).append((r.t, f["filters"]))
        elif k == "mqtt.claimed":
            # the registry gave the session to this node (actors/mqtt_owners.py): it is what it
            # fetched from the previous owner, what it had, or new -- whether or not a client is
            # still there to be told
            c, x = f["client"], f["node"]
            if f["how"] == "handed":
                holder[(c, x)] = gone.get((c, f["source"], x)) or holder.get((c, f["source"])) or \
                    new_lineage(c, x, r.t)
            elif f["how"] == "fresh":
                holder[(c, x)] = fresh[(c, x)] = new_lineage(c, x, r.t)
            elif f["how"] == "kept":
                holder.setdefault((c, x), new_lineage(c, x, r.t))
            # what this node gave up before is not what it holds (and hands over) from now on
            for key in [key for key in gone if key[0] == c and key[1] == x]:
                del gone[key]
        elif k == "mqtt.connected":
            c, x = f["client"], f["node"]
            located.setdefault(c, []).append((r.t, x))
            if not f["present"]:
                lin = fresh.pop((c, x), None) or new_lineage(c, x, r.t)
            else:
                lin = holder.get((c, x)) or new_lineage(c, x, r.t)
            holder[(c, x)] = lin
        elif k == "mqtt.session_gone":
            gone[(f["client"], f["node"], f["to"])] = holder.pop((f["client"], f["node"]), None)
        elif k == "mqtt.routes":
            tables.setdefault(f["node"], _Intervals()).set(r.t, frozenset(f["routes"]))
        elif k == "sim.crash":
            crashes.setdefault(r.node, []).append(r.t)
            tables.setdefault(r.node, _Intervals()).set(r.t, None)  # no table until the front boots again

    epoch_start: dict[str, float] = {}
    for c, cs in connacks.items():
        news = [t for t, _, _, present in cs if not present]
        epoch_start[c] = news[-1] if news else cs[0][0]

    def excuse(why: str) -> None:
        stats["excused"][why] = stats["excused"].get(why, 0) + 1

    # ---------------------------------------------------------- delivered
    first_delivery: dict[str, dict[str, int]] = {}  # S -> payload -> index among S's live deliveries (final epoch)
    delivered_final: dict[str, set[str]] = {}
    for s, ds in delivers.items():
        start = epoch_start.get(s, 0.0)
        seen: dict[str, int] = {}
        got: set[str] = set()
        for i, (t, p, _q, retain, _conn) in enumerate(ds):
            if t < start:
                continue
            got.add(p)
            if not retain and p not in seen:
                seen[p] = i
        first_delivery[s] = seen
        delivered_final[s] = got

    # --------------------------------------------------- at least once, order
    ordered: dict[tuple[str, str, str], list[tuple[int, str]]] = {}  # (S, P, topic) -> (seq, payload)
    for (pub, seq), (t_ack, conn, node_o) in sorted(acks.items(), key=lambda kv: kv[1][0]):
        topic, qos, _retain = info[(pub, seq)]
        stats["acked"] += 1
        t_send = min((t for t, c, _n, _d in sends[(pub, seq)] if c == conn), default=None)
        if t_send is None:
            continue
        t_routed = t_ack  # the broker routed it between t_send and this
        expired = t_ack - t_send >= ack_wait
        if qos == 2:
            # A QoS 2 publish sent again into the same session is answered from the packet ids that
            # session holds: it was routed when the session first received it, maybe on another node.
            lin = conn_lineage.get(conn)
            first = min((t, c, n) for t, c, n, _d in sends[(pub, seq)] if conn_lineage.get(c) == lin)
            if first[1] != conn:
                t_routed, (t_send, _c, node_o), expired = t_send, first, True
        w_end = final.end_t if expired else t_ack
        p = f"{pub}|{topic}|{seq}"
        for s in sorted(subscribers):
            start = epoch_start.get(s)
            if start is None or start >= t_send:
                excuse("new session since")
                continue
            granted = [g for t, fl in subacks.get(s, ()) if start <= t < t_send for flt, g in fl
                       if g in (1, 2) and _matches(flt, topic)]
            if not granted:
                if any(_matches(flt, topic) for _t, fl in subacks.get(s, ()) for flt, _g in fl):
                    excuse("not subscribed yet")
                continue
            locs = located.get(s, [])
            before = [n for t, n in locs if t <= t_send]
            if not before:
                continue
            d = before[-1]
            if any(n != d for t, n in locs if t_send < t <= w_end + takeover_wait):
                excuse("session moved")
                continue
            if node_o != d:
                known = tables.get(node_o)
                views = known.between(t_send, t_routed) if known is not None else [None]
                if not all(v is not None and any(rn == d and _matches(rf, topic) for rn, rf in v) for v in views):
                    excuse("route not known at the origin")
                    continue
            if expired and any(t_send <= t for t in crashes.get(node_o, ())):
                excuse("origin crashed with it queued")
                continue
            stats["required"] += 1
            if p not in delivered_final.get(s, ()):
                out["mqtt_at_least_once"].append(Violation(
                    "mqtt_at_least_once",
                    f"{p} (QoS {qos}, sent to {node_o} at t={t_send:.3f}, acknowledged at t={t_ack:.3f}"
                    f"{' on the deadline' if expired else ''}) never reached subscriber {s}, whose session "
                    f"lived on {d} (final epoch since t={start:.3f})",
                    {"payload": p, "subscriber": s, "origin": node_o, "session_node": d}))
                continue
            stats["delivered"] += 1
            if not expired and len(sends[(pub, seq)]) == 1:
                ordered.setdefault((s, pub, topic), []).append((seq, p))

    for (s, pub, topic), msgs in sorted(ordered.items()):
        first = first_delivery.get(s, {})
        msgs.sort()
        prev: tuple[int, int] | None = None
        for seq, p in msgs:
            i = first.get(p)
            if i is None:
                continue  # only a retained copy reached it
            if prev is not None and i < prev[1]:
                out["mqtt_order"].append(Violation(
                    "mqtt_order", f"{s} got {p} before {pub}|{topic}|{prev[0]} (publisher order "
                    f"{prev[0]} < {seq})", {"subscriber": s, "publisher": pub, "topic": topic}))
            if prev is None or i > prev[1]:
                prev = (seq, i)

    # -------------------------------------------------- single session
    for s, cs in sorted(connacks.items()):
        for (t0, c0, n0, _p0), (t1, c1, n1, p1) in zip(cs, cs[1:]):
            if p1 and conn_lineage[c1] != conn_lineage[c0]:
                born = lineages[conn_lineage[c1] - 1]
                had = lineages[conn_lineage[c0] - 1]
                out["mqtt_single_session"].append(Violation(
                    "mqtt_single_session",
                    f"{s}'s CONNACK from {n1} at t={t1:.3f} said its session was present, but {n1} resumed the "
                    f"session begun on {born[1]} at t={born[2]:.3f}, not the one {s} had on {n0} (begun on "
                    f"{had[1]} at t={had[2]:.3f}): a node out of reach when {s} moved kept a session of its own",
                    {"subscriber": s, "conn": c1, "node": n1}))

    # ------------------------------------------------------- exactly once
    # a QoS 2 publish sent again into another session than the one it was first sent into (the broker
    # forgot, or never had, the packet id it received): two messages, by MQTT's rules
    ambiguous = {key for key, ss in sends.items()
                 if len({conn_lineage.get(c) for _t, c, _n, _dup in ss}) > 1}
    for s, ds in sorted(delivers.items()):
        # one session: one lineage, and no CONNACK in between that told the client its session was new
        # (after one, it forgets the ids it held: an old lineage coming back is mqtt_single_session's)
        news = [t for t, _c, _n, present in connacks.get(s, ()) if not present]
        copies: dict[tuple[int, int, str], list[tuple[float, str]]] = {}
        for t, p, q, retain, conn in ds:
            if q == 2 and not retain:
                copies.setdefault((conn_lineage.get(conn, 0), bisect_right(news, t), p), []).append((t, conn))
        for (lin, _epoch, p), got in sorted(copies.items()):
            if len(got) < 2:
                continue
            pub, _topic, seq = p.rsplit("|", 2)
            if (pub, int(seq)) in ambiguous:
                excuse("QoS 2 publisher's session lost or replaced")
                continue
            t_first, t_last = got[0][0], got[-1][0]
            hosts = {n for t, n in located.get(s, ()) if t <= t_last}
            # (the node sent the first copy a little before the client had it: a crash just before counts)
            if any(t_first - IN_FLIGHT_S < tc <= t_last for n in hosts for tc in crashes.get(n, ())):
                excuse("QoS 2 again after the session's node crashed")  # documented: ids not persisted
                continue
            sent = [t for t, _c, _n, _d in sends[(pub, int(seq))]]
            hosts = {n for t, n in located.get(pub, ()) if t <= sent[-1]}
            if any(sent[0] < tc <= sent[-1] for n in hosts for tc in crashes.get(n, ())):
                excuse("QoS 2 sent again after the publisher's node crashed")  # the same, publisher side
                continue
            out["mqtt_exactly_once"].append(Violation(
                "mqtt_exactly_once", f"{s} got QoS 2 message {p} {len(got)} times in one session, at t="
                + ", ".join(f"{t:.3f} ({c})" for t, c in got), {"subscriber": s, "payload": p}))

    # ------------------------------------------------------- convergence
    agency = final.agency if isinstance(final.agency, dict) else {}
    a_routes = {n: {unescape(seg) for seg in (fs or {})} for n, fs in (agency.get("routes") or {}).items()}
    a_retained = {}
    for seg, doc in (agency.get("retained") or {}).items():
        if isinstance(doc, dict) and "p" in doc:
            a_retained[unescape(seg)] = (base64.b64decode(doc["p"]), int(doc.get("q", 0)))
    if final.leader is None:
        out["mqtt_routes_converge"].append(Violation("mqtt_routes_converge", "no agency leader at the end", {}))
    for n, st in sorted(final.nodes.items()):
        if st is None:
            out["mqtt_routes_converge"].append(Violation(
                "mqtt_routes_converge", f"the MQTT front of {n} is not running at the end", {"node": n}))
            continue
        if final.leader is None:
            continue
        if not st["loaded"]:
            out["mqtt_routes_converge"].append(Violation(
                "mqtt_routes_converge", f"{n} never loaded the route table", {"node": n}))
        others = {d: fs for d, fs in a_routes.items() if d != n and fs}
        mine = {d: fs for d, fs in st["routes"].items() if fs}
        if mine != others:
            diff = sorted({(d, f) for d, fs in others.items() for f in fs} ^ {(d, f) for d, fs in mine.items()
                                                                              for f in fs})
            out["mqtt_routes_converge"].append(Violation(
                "mqtt_routes_converge", f"{n}'s route table differs from the agency's in {diff[:6]}",
                {"node": n, "node_table": sorted(mine.items()), "agency": sorted(others.items())}))
        own = a_routes.get(n, set())
        if own != st["filters"]:
            out["mqtt_routes_converge"].append(Violation(
                "mqtt_routes_converge", f"the agency's routes of {n} {sorted(own)} are not the filters of its "
                f"sessions {sorted(st['filters'])}", {"node": n}))
        if st["retained"] != a_retained:
            diff = sorted(set(st["retained"].items()) ^ set(a_retained.items()))
            out["mqtt_retained_converge"].append(Violation(
                "mqtt_retained_converge", f"{n}'s retained messages differ from the agency's in "
                f"{[(t, p.decode()) for t, (p, _q) in diff[:4]]}", {"node": n}))
    retained_published = {(t, f"{pub}|{t}|{seq}") for (pub, seq), (t, _q, retain) in info.items() if retain}
    for topic, (p, _q) in sorted(a_retained.items()):
        if (topic, p.decode(errors="replace")) not in retained_published:
            out["mqtt_retained_converge"].append(Violation(
                "mqtt_retained_converge", f"the agency retains {p!r} on {topic}, which no client published "
                "there with the retain flag", {"topic": topic}))

    # ------------------------------------------------------------ liveness
    for s in sorted(subscribers):
        cs = connacks.get(s, [])
        if not cs or not subacks.get(s):
            out["mqtt_liveness"].append(Violation(
                "mqtt_liveness", f"subscriber {s} never " + ("subscribed" if cs else "connected"), {"subscriber": s}))
            continue
        last_conn = cs[-1][1]
        gave_up = [r for r in history if r.kind in ("mqttc.give_up", "mqttc.closed") and r.fields["conn"] == last_conn]
        if gave_up:
            out["mqtt_liveness"].append(Violation(
                "mqtt_liveness", f"subscriber {s} is not connected at the end", {"subscriber": s}))
    late = {f"{pub}|{info[(pub, seq)][0]}|{seq}" for (pub, seq), (t, _c, _n) in acks.items() if t >= heal_t}
    if subscribers and acks and not any(p in late for got in delivered_final.values() for p in got):
        out["mqtt_liveness"].append(Violation(
            "mqtt_liveness", "no message acknowledged after the faults were healed was delivered", {}))

    for k in out:
        if len(out[k]) > MAX_VIOLATIONS:
            out[k] = out[k][:MAX_VIOLATIONS] + [Violation(k, f"... and {len(out[k]) - MAX_VIOLATIONS} more", {})]
    return out, stats
