"""The asyncio consumer (:class:`AsyncConsumer`): subscriptions, delivery,
acknowledgements.  Documented in :mod:`runtime.client`."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import ssl
import threading
from collections import deque
from typing import Any, Sequence

from protocol import frames as fr
from protocol.frames import ErrorCode, Mode
from runtime.client_conn import (
    BACKOFF_MAX_S, ChorusError, Message, _AsyncContext, _Cluster,
)
from runtime.tls import client_ssl

log = logging.getLogger("runtime.client")
RESETS_MAX = 100


class AsyncConsumer(_AsyncContext):
    """A consumer attached to the durable subscription ``subscription`` of ``topic``.

    ``mode`` (``"exclusive"``, ``"shared"``, ``"failover"``) is used when the
    subscription does not exist yet.  Iterate it (``async for msg in c``) or
    call :meth:`poll`; settle each message with ``msg.ack()`` /
    ``msg.nack()``.  :attr:`active` is False while a ``failover``
    subscription holds this consumer as a standby.  Starting raises
    ``ChorusError(SUBSCRIPTION_BUSY)`` when an ``exclusive`` subscription
    already has another consumer.
    """

    def __init__(self, bootstrap: str | Sequence[str], topic: str, subscription: str, *,
                 mode: Mode | str = Mode.EXCLUSIVE, consumer_id: str | None = None, client_id: str | None = None,
                 keepalive_s: float = 1.0, ack_interval_ms: float = 20, ack_batch_max: int = 512,
                 connect_timeout_s: float = 10.0, request_timeout_s: float = 30.0, username: str = "",
                 password: str = "", tls: bool | ssl.SSLContext = False, ca_file: str | None = None) -> None:
        if not topic or not subscription:
            raise ValueError("topic and subscription must be non-empty")
        self.topic = topic
        self.subscription = subscription
        self.mode = Mode(mode)
        self.consumer_id = consumer_id or f"consumer-{os.getpid()}-{os.urandom(4).hex()}"
        self.keepalive_s = keepalive_s
        self.ack_interval_s = ack_interval_ms / 1000
        self.ack_batch_max = ack_batch_max
        self.active = False
        self._cluster = _Cluster(bootstrap, client_id=client_id, connect_timeout_s=connect_timeout_s,
                                 request_timeout_s=request_timeout_s, username=username, password=password,
                                 ssl_context=client_ssl(tls, ca_file))
        self._cluster.on_delivery = self._on_delivery
        self._request = fr.SubscribeRequest(topic=topic, subscription=subscription, mode=self.mode,
                                            consumer_id=self.consumer_id)
        # Delivered messages and acknowledgements are shared with the
        # blocking Consumer's calling threads: this lock guards them, and its
        # condition is notified when messages arrive or the consumer ends.
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._messages: deque[Message] = deque()
        # SubscriptionReset notices (the last RESETS_MAX): records skipped
        # because retention dropped the shard group the subscription was in
        self.resets: deque[fr.SubscriptionReset] = deque(maxlen=RESETS_MAX)
        self._ready = asyncio.Event()  # set when messages arrive or the consumer ends (loop thread)
        self._ended = False
        self._round: _AckRound | None = None  # acknowledgements being collected
        self._rounds: dict[_AckRound, None] = {}  # rounds not yet answered, oldest first
        self._acked = asyncio.Event()  # set whenever a round is answered
        self._ack_wake = asyncio.Event()
        self._flushing = 0
        self._blocking = False  # the blocking Consumer: acknowledgement futures are concurrent ones
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._error: ChorusError | None = None
        self._closing = False
        self._closed = False

    async def start(self) -> "AsyncConsumer":
        """Attach to the subscription; deliveries start right after."""
        self._loop = asyncio.get_running_loop()
        await self._subscribe()
        self._tasks = [asyncio.create_task(self._keepalive_loop(), name="chorus-consumer-keepalive"),
                       asyncio.create_task(self._ack_loop(), name="chorus-consumer-acks")]
        return self

    async def _close_now(self) -> None:
        await self.close(timeout_s=0)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Send pending acknowledgements (waiting at most ``timeout_s``) and
        detach by closing the connection; iteration then ends."""
        if self._closing:
            return
        self._closing = True
        if timeout_s > 0:
            try:
                await self.flush_acks(timeout_s)
            except ChorusError:
                pass
        with self._lock:
            self._closed = True
            left = list(self._rounds)
            self._round = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        err = ChorusError(None, "the consumer was closed before the acknowledgement was sent")
        for r in left:
            self._answer_round(r, err, quiet=True)
        await self._cluster.close()
        self._end(None, drop=True)

    def _end(self, error: ChorusError | None, drop: bool = False) -> None:
        """No more messages will arrive (loop thread): pollers get what is
        left (nothing with ``drop``), then None or ``error``."""
        with self._lock:
            if error is not None and self._error is None:
                self._error = error
            self._ended = True
            if drop:
                self._messages.clear()
            self._arrived.notify_all()
        self._ready.set()

    # -- receiving

    def __aiter__(self) -> "AsyncConsumer":
        return self

    async def __anext__(self) -> Message:
        msg = await self.poll()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def poll(self, timeout_s: float | None = None) -> Message | None:
        """The next message; None after ``timeout_s`` or once the consumer is
        closed.  Raises the error that stopped the consumer, if any."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    self._ready.clear()
                    msg = self._take()
                    if msg is not None or self._ended:
                        return msg
                    await self._ready.wait()
        except TimeoutError:
            return None

    def _take(self) -> Message | None:
        """The next delivered message, None if there is none (the lock may be
        held); raises the error that ended the consumer once all are taken."""
        if self._messages:
            return self._messages.popleft()
        if self._ended and self._error is not None:
            raise self._error.copy()
        return None

    def _on_delivery(self, d: fr.Delivery | fr.SubscriptionReset) -> None:
        if self._closed or d.topic != self.topic or d.subscription != self.subscription:
            return
        if isinstance(d, fr.SubscriptionReset):
            # records were skipped: retention dropped the shard group this
            # subscription was reading (like Kafka's offset reset to earliest)
            log.warning("subscription %s of %s, shard %d: %s", self.subscription, self.topic, d.shard, d.reason)
            with self._lock:
                self.resets.append(d)
            return
        settle = self._settle
        msgs = [Message(d.topic, d.shard, r.offset, r.payload, r.redelivery, d.subscription, d.shard_id, settle)
                for r in d.records]
        with self._lock:
            self._messages.extend(msgs)
            self._arrived.notify(len(msgs))
        self._ready.set()

    # -- subscription keep-alive

    async def _subscribe(self) -> None:
        resp = await self._cluster.call(self._request)
        if not isinstance(resp, fr.SubscribeResponse):
            raise ChorusError(None, f"unexpected answer {type(resp).__name__} to a SubscribeRequest")
        self.active = resp.active

    async def _keepalive_loop(self) -> None:
        while True:
            conn = self._cluster.current
            if conn is not None and conn.is_open:
                try:  # until the next keep-alive is due, or the connection is lost
                    async with asyncio.timeout(self.keepalive_s):
                        await asyncio.shield(conn.closed)
                except TimeoutError:
                    pass
            try:
                await self._subscribe()
            except ChorusError as e:
                if e.code is ErrorCode.SUBSCRIPTION_BUSY:
                    self.active = False
                    log.warning("subscription %s of %s is held by another consumer; retrying", self.subscription,
                                self.topic)
                elif not e.retriable:
                    self._end(e)
                    return
                else:
                    log.info("keep-alive of subscription %s failed: %s", self.subscription, e)
                await asyncio.sleep(min(self.keepalive_s, BACKOFF_MAX_S))

    # -- acknowledgements

    def ack(self, msg: Message) -> "asyncio.Future[None]":
        """Acknowledge ``msg`` (same as ``msg.ack()``)."""
        return self._settle(msg, False)

    def nack(self, msg: Message) -> "asyncio.Future[None]":
        """Ask for ``msg`` to be delivered again (same as ``msg.nack()``)."""
        return self._settle(msg, True)

    def _settle(self, msg: Message, nack: bool) -> Any:
        """Add an acknowledgement to the round being collected (any thread
        for the blocking Consumer); the round's future."""
        with self._lock:
            if self._closed:
                raise ChorusError(None, "the consumer is closed")
            r = self._round
            opened = r is None
            if opened:
                r = self._round = _AckRound(None if self._blocking else self._loop)
                self._rounds[r] = None
            r.groups.setdefault((msg.shard, msg.shard_id, nack), []).append(msg.offset)
            r.count += 1
            wake = opened or r.count == self.ack_batch_max
        if wake:
            if self._blocking:
                self._loop.call_soon_threadsafe(self._ack_wake.set)  # type: ignore[union-attr]
            else:
                self._ack_wake.set()
        return r.future

    async def flush_acks(self, timeout_s: float | None = None) -> None:
        """Wait until every acknowledgement made so far is confirmed or failed."""
        with self._lock:
            rounds = list(self._rounds)
        if not rounds:
            return
        self._flushing += 1
        self._ack_wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                for r in rounds:
                    while not r.done:
                        self._acked.clear()
                        await self._acked.wait()
        except TimeoutError:
            left = sum(r.count for r in rounds if not r.done)
            raise ChorusError(ErrorCode.TIMEOUT, f"{left} acknowledgements not confirmed within "
                                                 f"{timeout_s:g} s") from None
        finally:
            self._flushing -= 1

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            with self._lock:
                count = self._round.count if self._round is not None else 0
            if not count:
                continue
            if count < self.ack_batch_max and not self._closing and not self._flushing:
                await asyncio.sleep(self.ack_interval_s)
            with self._lock:
                r, self._round = self._round, None
            if r is not None:
                await self._send_round(r)

    async def _send_round(self, r: "_AckRound") -> None:
        async def send(shard: int, shard_id: int, nack: bool, offsets: list[int]) -> None:
            req = fr.AckRequest(topic=self.topic, shard=shard, subscription=self.subscription,
                                consumer_id=self.consumer_id, offsets=tuple(offsets), nack=nack, shard_id=shard_id)
            resp = await self._cluster.call(req)
            if not isinstance(resp, fr.AckResponse):
                raise ChorusError(None, f"unexpected answer {type(resp).__name__} to an AckRequest")
        results = await asyncio.gather(*(send(shard, shard_id, nack, offsets)
                                         for (shard, shard_id, nack), offsets in r.groups.items()),
                                       return_exceptions=True)
        error = next((e for e in results if isinstance(e, BaseException)), None)
        if error is not None and not isinstance(error, ChorusError):
            error = ChorusError(None, f"acknowledgement failed: {error!r}")
        self._answer_round(r, error)

    def _answer_round(self, r: "_AckRound", error: ChorusError | None, quiet: bool = False) -> None:
        with self._lock:
            if r.done:
                return
            r.done = True
            self._rounds.pop(r, None)
        if error is not None and not quiet and not self._closed:
            log.warning("%d acknowledgements to subscription %s failed (the records will be delivered again): %s",
                        r.count, self.subscription, error)
        fut = r.future
        if not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error.copy())
                if isinstance(fut, asyncio.Future):
                    fut.exception()  # reported above: no "never retrieved" noise
        self._acked.set()


class _AckRound:
    """The acknowledgements collected during one ``ack_interval_ms``, sent
    as one ``AckRequest`` per shard (index and shard id) and kind; every ``ack()`` of the round
    returns the round's one future."""

    __slots__ = ("groups", "count", "future", "done")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.groups: dict[tuple[int, int, bool], list[int]] = {}  # (index, shard id, nack) -> offsets
        self.count = 0
        self.future: Any = loop.create_future() if loop is not None else concurrent.futures.Future()
        self.done = False


# -- blocking wrappers ------------------------------------------------------------
