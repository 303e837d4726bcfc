"""The Dispatcher's MQTT duties (a mixin): the admin calls behind
``/api/v1/mqtt`` (the node's MQTT status, the MQTT <-> log bridges) and
the appends of MQTT -> log bridges (``LogAppend`` from the node's
MqttFront, placed by record key like any produce).  See
``actors/mqtt_bridge.py`` for what a bridge does."""
from __future__ import annotations

import json
from typing import Any, Callable

from actors.mqtt_bridge import BRIDGES_MAX
from protocol.agency import AgencyReply, Mutation, Txn
from protocol.hashing import shard_for_key
from protocol.mqtt import MqttProtocolError, parse_shared, validate_topic_filter, validate_topic_name
from protocol.mqtt_cluster import BRIDGES_ROOT, LogAppend, LogAppendReply, MqttStatusQuery, MqttStatusReply
from protocol.records import Record, encode_batch
from protocol.topics import _PART_RE

LEVELS = ("any", "one", "quorum", "all")


class DispatcherMqtt:
    """Mixed into :class:`actors.dispatcher.Dispatcher`."""

    # ------------------------------------------------------------- status
    def _admin_mqtt(self, args: dict, ok: Callable, fail: Callable) -> None:
        ep = self.boot.endpoints
        if ep is None or ep.mqtt is None:
            fail(503, "unavailable", "this node has no MQTT front end")
            return
        self.mqtt_waiters.append(ok)
        self.send(ep.mqtt, MqttStatusQuery())

    def on_MqttStatusReply(self, msg: MqttStatusReply, sender: Any) -> None:
        waiters, self.mqtt_waiters = self.mqtt_waiters, []
        for cb in waiters:
            cb(msg.status)

    # ------------------------------------------------------------ bridges
    def _admin_mqtt_bridges(self, args: dict, ok: Callable, fail: Callable) -> None:
        from protocol.agency import Read

        def done(reply: AgencyReply) -> None:
            if reply.status != "ok":
                fail(503, "unavailable", f"the agency did not answer: {reply.error or reply.status}")
                return
            tree = (reply.result.get("values") or [None])[0] or {}
            ok([{"name": n, **json.loads(v)} for n, v in sorted(tree.items()) if isinstance(v, str)])

        self._agency(Read((BRIDGES_ROOT,), linearizable=False), done)

    def _admin_put_mqtt_bridge(self, args: dict, ok: Callable, fail: Callable) -> None:
        name, body = args.get("name", ""), args.get("spec")
        try:
            doc = self._bridge_doc(name, body)
        except ValueError as exc:
            fail(400, "bad_request", str(exc))
            return
        if doc is None:
            fail(404, "not_found", f"topic {body.get('topic')!r} does not exist")
            return

        def done(reply: AgencyReply) -> None:
            if reply.status != "ok":
                fail(503, "unavailable", f"not stored: {reply.error or reply.status}")
            else:
                ok({"name": name, **doc})

        def counted(existing: list) -> None:
            if len(existing) >= BRIDGES_MAX and name not in {b["name"] for b in existing}:
                fail(409, "conflict", f"at most {BRIDGES_MAX} bridges")
                return
            self._agency(Txn((Mutation(f"{BRIDGES_ROOT}/{name}", "set", json.dumps(doc, sort_keys=True)),)), done)

        self._admin_mqtt_bridges({}, counted, fail)

    def _bridge_doc(self, name: str, body: Any) -> dict | None:
        """The stored form of a bridge (None: its topic does not exist);
        ValueError says what is wrong with the request."""
        if not isinstance(name, str) or not _PART_RE.fullmatch(name):
            raise ValueError("a bridge name is 1-64 characters of A-Z a-z 0-9 . _ -")
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        direction = body.get("direction")
        topic = body.get("topic")
        if not isinstance(topic, str):
            raise ValueError("topic: the Chorus topic (tenant/product/component/topic) is required")
        spec = self.topics.get(topic)
        try:
            if direction == "in":
                flt = body.get("filter")
                if not isinstance(flt, str):
                    raise ValueError("filter: the MQTT topic filter to store is required")
                validate_topic_filter(flt)
                if parse_shared(flt)[0] is not None:
                    raise ValueError("filter: a shared subscription ($share/...) cannot be a bridge's filter")
                level = body.get("level", "quorum")
                if level not in LEVELS:
                    raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
                doc = {"direction": "in", "filter": flt, "topic": topic, "level": level}
            elif direction == "out":
                prefix = body.get("prefix")
                if not isinstance(prefix, str):
                    raise ValueError("prefix: the MQTT topic prefix to publish under is required")
                validate_topic_name(prefix)
                if prefix.startswith("$"):
                    raise ValueError("prefix: '$' topics are the server's")
                doc = {"direction": "out", "topic": topic, "prefix": prefix,
                       "shards": int(spec.get("shards", 1)) if spec else 0}
            else:
                raise ValueError("direction must be 'in' (MQTT -> log) or 'out' (log -> MQTT)")
        except MqttProtocolError as exc:
            raise ValueError(exc.message) from None
        return doc if spec is not None else None

    def _admin_delete_mqtt_bridge(self, args: dict, ok: Callable, fail: Callable) -> None:
        name = args.get("name", "")
        from protocol.agency import Precondition

        def done(reply: AgencyReply) -> None:
            if reply.status != "ok":
                fail(503, "unavailable", f"not deleted: {reply.error or reply.status}")
            elif not (reply.result or {}).get("ok", True):
                fail(404, "not_found", f"no bridge {name!r}")
            else:
                ok({"name": name, "deleted": True})

        path = f"{BRIDGES_ROOT}/{name}"
        self._agency(Txn((Mutation(path, "delete"),), (Precondition(path, "present"),)), done)

    # ------------------------------------------------------------ appends
    def on_LogAppend(self, msg: LogAppend, sender: Any) -> None:
        spec = self.topics.get(msg.topic)
        if spec is None:
            self.send(sender, LogAppendReply(msg.req, False, f"topic {msg.topic!r} does not exist"))
            return
        n = int(spec.get("shards", 1))
        ts_ms = int(self.wall() * 1000)
        by_shard: dict[int, list[Record]] = {}
        for key, value in msg.records:
            by_shard.setdefault(shard_for_key(key, n), []).append(Record(key, value, (), ts_ms))
        state = {"left": len(by_shard), "errors": []}

        def settle(error: str | None) -> None:
            if error:
                state["errors"].append(error)
            state["left"] -= 1
            if state["left"] == 0:
                errors = state["errors"]
                self.send(sender, LogAppendReply(msg.req, not errors, "; ".join(errors)[:500]))

        from actors.dispatcher import Refusal

        for index, records in sorted(by_shard.items()):
            try:
                self._produce(f"{msg.topic}#{index}", encode_batch(records), msg.level, 0, 0,
                              self.boot.listen.request_timeout_s, lambda _r: settle(None),
                              lambda _code, text: settle(text))
            except (Refusal, ValueError) as exc:
                settle(str(exc))
