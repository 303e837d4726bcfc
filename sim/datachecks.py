"""Checkers for the replicated shard log.

Inputs: the recorded history (``produce.invoke``/``produce.done``) and each
replica's final log (decoded batches), taken after the liveness phase in
which every fault was healed.

* ``acked_writes_durable`` -- every record acknowledged at ``quorum`` or
  ``all`` is in the shard leader's final log and below its high watermark
  (the scenarios keep a majority of each shard's replicas intact).  Records
  acknowledged at ``one``/``any`` may be lost when the leader dies before
  replicating; those losses are *counted* (``loss_at_one``), not failed.
* ``no_duplicates`` -- no record appears twice in a shard's log (the
  idempotent producer at work across retries and failovers).
* ``shard_order`` -- per producer and shard, sequence numbers increase with
  the offset.
* ``replicas_identical`` -- after the heal every replica of a shard holds
  byte-identical batches (no divergence, ever).
* ``offsets_unique`` -- two acknowledgements at ``quorum``/``all`` never
  name the same offset for different records.  (An acknowledgement at
  ``one`` whose record died with its leader frees that offset for the next
  leader; that loss is what ``loss_at_one`` counts.)
* ``hinted_writes_delivered`` -- every record acknowledged at ``any`` --
  kept as a hint in a coordinating node's queue (``level_met`` ``any``) or
  taken by the leader at quorum -- is in the shard leader's final log.
  Together with ``no_duplicates`` and ``shard_order``: exactly once and in
  order per producer.
* ``delivered_to_subscriptions`` -- every record acknowledged at quorum or
  all was delivered to every subscription (at-least-once), by the end of
  the settle phase.
* ``delivery_order`` -- in exclusive and failover subscriptions, each
  consumer sees a shard's offsets in increasing order within one leader
  epoch, except where a delivery is marked as a redelivery.
"""
from __future__ import annotations

from typing import Any, Iterable

from protocol.records import decode_batch
from sim.history import Record as HistRecord
from sim.history import Violation


def decode_log(batches: list[bytes]) -> list[tuple[int, bytes]]:
    out = []
    for b in batches:
        _h, recs = decode_batch(b)
        for r in recs:
            if not any(k == "chorus.control" for k, _ in r.headers):
                out.append((r.offset, r.payload))
    return out


def _acks(history: Iterable[HistRecord]) -> list[dict]:
    return [r.fields for r in history if r.kind == "produce.done" and r.fields["status"] == "ok"]


def check_data(
    history: list[HistRecord],
    logs: dict[str, dict[str, list[bytes]]],  # shard -> node -> batches
    leaders: dict[str, tuple[str, int]],  # shard -> (leader node, hw)
    subscriptions: list[str] | None = None,
) -> tuple[dict[str, list[Violation]], dict[str, Any]]:
    out: dict[str, list[Violation]] = {k: [] for k in (
        "acked_writes_durable", "no_duplicates", "shard_order", "replicas_identical", "offsets_unique",
        "delivered_to_subscriptions", "delivery_order", "hinted_writes_delivered")}
    stats: dict[str, Any] = {"loss_at_one": 0, "acked_records": 0, "hinted_records": 0}
    decoded: dict[str, list[tuple[int, bytes]]] = {}
    where: dict[str, dict[bytes, int]] = {}
    for shard, per_node in sorted(logs.items()):
        lead = leaders.get(shard)
        if lead is None:
            continue  # reported by data_liveness; durability cannot be judged without a leader
        node, _hw = lead
        recs = decode_log(per_node.get(node, []))
        decoded[shard] = recs
        seen: dict[bytes, int] = {}
        for off, p in recs:
            if p in seen:
                out["no_duplicates"].append(Violation(
                    "no_duplicates", f"shard {shard}: record {p.decode()} at offsets {seen[p]} and {off}",
                    {"shard": shard, "payload": p.decode(), "offsets": [seen[p], off]}))
            seen[p] = off
        where[shard] = seen
        last_seq: dict[str, tuple[int, int]] = {}
        for off, p in recs:
            prod, _s, seq = p.decode().rsplit("|", 2)
            prev = last_seq.get(prod)
            if prev is not None and int(seq) <= prev[0]:
                out["shard_order"].append(Violation(
                    "shard_order", f"shard {shard}: {prod} seq {seq} at offset {off} after seq {prev[0]} at "
                    f"offset {prev[1]}", {"shard": shard}))
            last_seq[prod] = (int(seq), off)
        ref = per_node.get(node, [])
        for other in sorted(per_node):
            if other != node and per_node[other] != ref:
                n_a, n_b = len(ref), len(per_node[other])
                first = next((i for i in range(min(n_a, n_b)) if ref[i] != per_node[other][i]), min(n_a, n_b))
                out["replicas_identical"].append(Violation(
                    "replicas_identical",
                    f"shard {shard}: replica {other} differs from leader {node} from batch #{first} "
                    f"({n_b} vs {n_a} batches)", {"shard": shard, "replica": other, "first_diff": first}))
    claimed: dict[tuple[str, int], bytes] = {}
    for a in _acks(history):
        shard = a["shard"]
        stats["acked_records"] += a["count"]
        if shard not in where:
            continue  # no leader (see data_liveness)
        present = where[shard]
        hw = leaders.get(shard, ("", 0))[1]
        for i in range(a["count"]):
            p = f"{a['producer']}|{shard}|{a['seq'] + i}".encode()
            off = present.get(p)
            if a["base_offset"] >= 0 and not a["duplicate"] and a["level"] in ("quorum", "all"):
                key = (shard, a["base_offset"] + i)
                if key in claimed and claimed[key] != p:
                    out["offsets_unique"].append(Violation(
                        "offsets_unique", f"shard {shard} offset {key[1]} acknowledged for {claimed[key].decode()} "
                        f"and {p.decode()}", {"shard": shard}))
                claimed[key] = p
            hinted = a["level"] == "any" and a.get("level_met") == "any"
            stats["hinted_records"] += hinted
            if a["level"] == "any" and off is None:
                how = "kept as a hint" if hinted else f"met {a.get('level_met') or '?'}"
                out["hinted_writes_delivered"].append(Violation(
                    "hinted_writes_delivered",
                    f"shard {shard}: {p.decode()} acknowledged at any ({how}) is missing from the "
                    "leader's log", {"shard": shard, "payload": p.decode()}))
            elif off is None or off >= hw:
                if a["level"] in ("quorum", "all"):
                    out["acked_writes_durable"].append(Violation(
                        "acked_writes_durable",
                        f"shard {shard}: {p.decode()} acknowledged at {a['level']} (offset {a['base_offset'] + i}) "
                        + ("is missing from the leader's log" if off is None else f"is above the high watermark {hw}"),
                        {"shard": shard, "payload": p.decode()}))
                else:
                    stats["loss_at_one"] += 1
    _check_consumers(history, subscriptions or [], out, stats)
    for k in out:
        if len(out[k]) > 20:
            out[k] = out[k][:20] + [Violation(k, f"... and {len(out[k]) - 20} more", {})]
    return out, stats


def _check_consumers(history: list[HistRecord], subscriptions: list[str], out: dict, stats: dict) -> None:
    delivered: dict[str, set[bytes]] = {s: set() for s in subscriptions}
    last: dict[tuple[str, str, int], int] = {}
    count = 0
    for r in history:
        if r.kind != "consume.deliver":
            continue
        f = r.fields
        count += 1
        delivered.setdefault(f["subscription"], set()).add(f["payload"])
        if f["mode"] in ("exclusive", "failover"):
            key = (f["consumer"], f["shard"], f["epoch"])
            prev = last.get(key)
            if prev is not None and f["offset"] <= prev and not f["redelivery"]:
                out["delivery_order"].append(Violation(
                    "delivery_order", f"{f['consumer']} got {f['shard']} offset {f['offset']} after {prev} "
                    f"in epoch {f['epoch']} without a redelivery mark", {"consumer": f["consumer"]}))
            last[key] = f["offset"]
    stats["deliveries"] = count
    if not subscriptions:
        return
    for a in _acks(history):
        if a["level"] not in ("quorum", "all"):
            continue
        for i in range(a["count"]):
            p = f"{a['producer']}|{a['shard']}|{a['seq'] + i}".encode()
            for s in subscriptions:
                if p not in delivered[s]:
                    out["delivered_to_subscriptions"].append(Violation(
                        "delivered_to_subscriptions", f"{p.decode()} (acknowledged at {a['level']}) was never "
                        f"delivered to subscription {s}", {"subscription": s, "payload": p.decode()}))
