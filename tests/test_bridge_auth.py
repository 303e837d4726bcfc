"""A node that has not read its users yet (it just started, or its agency
peer has not caught up and shows no user at all) refuses a login with a
retriable error, not AUTH_FAILED: a client reconnecting to a
restarted node keeps trying and gets in once the users are there (a
consumer used to end for good with AUTH_FAILED when it reached a node in
that window; scenarios on real processes found it)."""
from __future__ import annotations

import asyncio
import threading

import pytest

from protocol.frames import ErrorCode
from protocol.node import ListenConfig
from protocol.users import hash_password, new_record
from runtime.bridge import IOBridge
from runtime.client import AsyncClient, ChorusAuthError, ChorusConnectionError

FAST = {"n": 16, "r": 1, "p": 1}  # cheap scrypt parameters for tests


def test_a_login_before_the_users_are_loaded_is_retried_not_refused() -> None:
    bridge = IOBridge(ListenConfig(client_port=0, http_port=-1, auth=True), node_id="n1", cluster_id="c").start()
    address = f"127.0.0.1:{bridge.client_port}"
    try:
        assert bridge.auth.enabled and not bridge.auth.loaded
        bridge.auth.set_users({})  # a restarted node's first view, before its agency peer caught up
        assert not bridge.auth.loaded

        async def login(password: str, timeout_s: float) -> str:
            async with AsyncClient(address, username="admin", password=password, connect_timeout_s=timeout_s) as c:
                return c.node_id

        with pytest.raises(ChorusConnectionError) as err:  # retried until the connect timeout, then given up
            asyncio.run(login("pw", 1.0))
        assert "not loaded its users yet" in str(err.value)

        # the users arrive while a client is retrying: it gets in
        load = threading.Timer(0.5, bridge.auth.set_users,
                               args=({"admin": new_record("admin", hash_password("pw", b"s" * 16, **FAST), ["admin"])},))
        load.start()
        assert asyncio.run(login("pw", 10.0)) == "n1"
        load.join()
        with pytest.raises(ChorusAuthError) as err:  # a wrong password is still refused at once
            asyncio.run(login("wrong", 10.0))
        assert err.value.code is ErrorCode.AUTH_FAILED
    finally:
        bridge.stop()
