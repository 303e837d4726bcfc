"""HTTP authentication and permissions (runtime/http_auth.py), in process:
the API application with a real Authenticator in front of an in-memory
gateway.  Real nodes: tests/test_auth_real.py."""
from __future__ import annotations

import asyncio
import base64

from aiohttp.test_utils import TestClient, TestServer

from protocol.users import ADMIN, hash_password, new_record, plan_change
from runtime.authn import Authenticator
from runtime.http_api import ROUTES, make_app
from runtime.http_auth import ACCESS
from test_http_api import TOPIC, FakeGateway

FAST = {"n": 16, "r": 1, "p": 1}


def record(name: str, password: str, roles=()) -> dict:
    return new_record(name, hash_password(password, b"s" * 16, **FAST), roles)


class UsersGateway(FakeGateway):
    """The fake gateway plus users, kept in the authenticator's view as a node would."""

    def __init__(self, auth: Authenticator) -> None:
        super().__init__()
        self.auth = auth
        self.users_ = {"root": record("root", "root-pass", [ADMIN]),
                       "alice": record("alice", "alice-pass", ["produce:acme", "consume:acme"]),
                       "bob": record("bob", "bob-pass", ["consume:globex"]),
                       "mgr": record("mgr", "mgr-pass", ["manage:acme"])}
        auth.set_users(self.users_)

    async def users(self) -> dict:
        return dict(self.users_)

    async def change_user(self, op, name, arg=None) -> dict:
        from protocol.users import UserError, public_view
        from runtime.gateway import GatewayError

        try:
            new = plan_change(self.users_, op, name, arg)
        except UserError as e:
            raise GatewayError(e.status, e.code, e.message) from None
        if new is None:
            del self.users_[name]
        else:
            self.users_[name] = new
        self.auth.set_users(dict(self.users_))
        return {"name": name, "deleted": True} if new is None else public_view(new)


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ROOT, ALICE, BOB, MGR = basic("root", "root-pass"), basic("alice", "alice-pass"), basic("bob", "bob-pass"), \
    basic("mgr", "mgr-pass")


def serve(scenario, requests_per_s: float = 10_000.0):
    auth = Authenticator(requests_per_s=requests_per_s)
    gw = UsersGateway(auth)

    async def main():
        async with TestClient(TestServer(make_app(gw, auth=auth), host="127.0.0.1")) as client:
            return await scenario(client, gw)

    try:
        return asyncio.run(main())
    finally:
        auth.close()


async def status_of(c, method: str, path: str, headers: dict | None = None, **kw) -> tuple[int, dict]:
    r = await c.request(method, path, headers=headers or {}, **kw)
    return r.status, await r.json()


def test_every_route_says_who_may_call_it():
    assert {r.handler.__name__ for r in ROUTES} <= set(ACCESS)


def test_open_endpoints_need_no_credentials_and_reveal_no_users():
    async def s(c, gw):
        for path in ("/api/v1/status", "/api/v1/cluster/directory", "/api/v1/openapi.json"):
            assert (await c.get(path)).status == 200
        doc = await (await c.get("/api/v1/openapi.json")).json()
        assert doc["paths"]["/api/v1/status"]["get"]["security"] == []
        assert "401" in doc["paths"]["/api/v1/topics"]["get"]["responses"]
        assert "403" in doc["paths"]["/api/v1/produce/{name}"]["post"]["responses"]
        assert set(doc["components"]["securitySchemes"]) == {"basic", "bearer"}
    serve(s)


def test_missing_or_wrong_credentials_are_401_with_a_challenge():
    async def s(c, gw):
        for headers, needle in (({}, "authentication required"), (basic("alice", "nope"), "not accepted"),
                                (basic("nobody", "x"), "not accepted"),
                                ({"Authorization": "Basic !!!"}, "malformed"),
                                ({"Authorization": "Bearer chorus_alice.x.y"}, "not valid")):
            r = await c.get("/api/v1/topics", headers=headers)
            body = await r.json()
            assert r.status == 401, body
            assert body["error"]["code"] == "unauthorized" and needle in body["error"]["message"]
            challenges = r.headers.getall("WWW-Authenticate")
            assert any(ch.startswith("Basic ") for ch in challenges) and any(ch.startswith("Bearer") for ch in challenges)
        assert not any(x[0] == "topics" for x in gw.calls)
    serve(s)


def test_tenant_roles_decide_each_call():
    async def s(c, gw):
        rec = {"records": [{"value": "v"}]}
        assert (await status_of(c, "POST", f"/api/v1/produce/{TOPIC}", ALICE, json=rec))[0] == 200
        st, body = await status_of(c, "POST", f"/api/v1/produce/{TOPIC}", BOB, json=rec)
        assert st == 403 and body["error"]["code"] == "forbidden"
        assert body["error"]["message"] == ("permission denied: user 'bob' may not produce on tenant 'acme' "
                                            "(needs role produce:acme)")
        assert (await status_of(c, "GET", f"/api/v1/fetch/{TOPIC}?shard=0", BOB))[0] == 403
        assert (await status_of(c, "GET", f"/api/v1/fetch/{TOPIC}?shard=0", ALICE))[0] == 200
        # topic admin: manage:acme, not produce or consume
        assert (await status_of(c, "DELETE", f"/api/v1/topics/{TOPIC}", ALICE))[0] == 403
        assert (await status_of(c, "POST", "/api/v1/topics", MGR, json={"name": "globex/a/b/c"}))[0] == 403
        assert (await status_of(c, "POST", "/api/v1/topics", MGR, json={"name": "acme/a/b/c"}))[0] == 201
        assert (await status_of(c, "PUT", "/api/v1/tenants/globex", MGR))[0] == 403
        assert (await status_of(c, "DELETE", f"/api/v1/topics/{TOPIC}", MGR))[0] == 200
        # cluster administration is the admins'
        for method, path in (("GET", "/api/v1/nodes"), ("GET", "/api/v1/shards"), ("GET", "/api/v1/mqtt"),
                             ("GET", "/api/v1/mqtt/bridges"), ("POST", "/api/v1/nodes/n3/promote"),
                             ("GET", "/api/v1/users")):
            assert (await status_of(c, method, path, MGR))[0] == 403, path
            assert (await status_of(c, method, path, ROOT))[0] == 200, path
        assert (await status_of(c, "GET", "/api/v1/shards?topic=acme/a/b/c", MGR))[0] == 200
    serve(s)


def test_lists_show_only_the_callers_tenants():
    async def s(c, gw):
        gw.add_topic({"name": "globex/x/y/z", "shards": 1})
        names = lambda ts: sorted(t["name"] for t in ts)  # noqa: E731
        assert names((await status_of(c, "GET", "/api/v1/topics", ALICE))[1]) == [TOPIC]
        assert names((await status_of(c, "GET", "/api/v1/topics", BOB))[1]) == ["globex/x/y/z"]
        assert names((await status_of(c, "GET", "/api/v1/topics", ROOT))[1]) == sorted([TOPIC, "globex/x/y/z"])
        assert set((await status_of(c, "GET", "/api/v1/tenants", BOB))[1]["tenants"]) == {"globex"}
    serve(s)


def test_user_management_end_to_end():
    async def s(c, gw):
        st, u = await status_of(c, "POST", "/api/v1/users", ROOT,
                                json={"name": "carol", "password": "carol-pass", "roles": ["consume:acme"]})
        assert st == 201 and u == {"name": "carol", "roles": ["consume:acme"], "tokens": []}
        assert "carol-pass" not in str(gw.users_["carol"])
        carol = basic("carol", "carol-pass")
        assert (await status_of(c, "GET", "/api/v1/whoami", carol))[1]["roles"] == ["consume:acme"]
        assert (await status_of(c, "POST", "/api/v1/users", ALICE, json={"name": "x", "password": "xxxxxxxx"}))[0] == 403
        st, body = await status_of(c, "POST", "/api/v1/users", ROOT, json={"name": "carol", "password": "whatever1"})
        assert st == 409 and "already exists" in body["error"]["message"]
        st, body = await status_of(c, "PUT", "/api/v1/users/carol/roles/root", ROOT)
        assert st == 400 and "ACTION:TENANT" in body["error"]["message"]
        st, body = await status_of(c, "PUT", "/api/v1/users/dave/roles/admin", ROOT)
        assert st == 404 and "no user 'dave'" in body["error"]["message"]
        assert (await status_of(c, "PUT", "/api/v1/users/carol/roles/produce:*", ROOT))[1]["roles"] == [
            "consume:acme", "produce:*"]
        assert (await status_of(c, "POST", "/api/v1/produce/globex/a/b/c", carol,
                                json={"records": [{"value": "v"}]}))[0] == 404  # allowed; no such topic
        assert (await status_of(c, "DELETE", "/api/v1/users/carol/roles/produce:*", ROOT))[0] == 200
        assert (await status_of(c, "POST", f"/api/v1/produce/{TOPIC}", carol,
                                json={"records": [{"value": "v"}]}))[0] == 403
        # a new password: the old one stops working
        assert (await status_of(c, "PATCH", "/api/v1/users/carol", ROOT, json={"password": "new-carol-pass"}))[0] == 200
        assert (await status_of(c, "GET", "/api/v1/whoami", carol))[0] == 401
        assert (await status_of(c, "GET", "/api/v1/whoami", basic("carol", "new-carol-pass")))[0] == 200
        st, body = await status_of(c, "PATCH", "/api/v1/users/carol", ROOT, json={"password": "short"})
        assert st == 400
        # the last admin stays
        st, body = await status_of(c, "DELETE", "/api/v1/users/root", ROOT)
        assert st == 409 and "last admin" in body["error"]["message"]
        st, body = await status_of(c, "DELETE", "/api/v1/users/root/roles/admin", ROOT)
        assert st == 409
        assert (await status_of(c, "DELETE", "/api/v1/users/carol", ROOT))[0] == 200
        assert (await status_of(c, "GET", "/api/v1/whoami", basic("carol", "new-carol-pass")))[0] == 401
        listed = (await status_of(c, "GET", "/api/v1/users", ROOT))[1]
        assert [u["name"] for u in listed] == ["alice", "bob", "mgr", "root"]
        assert all(set(u) == {"name", "roles", "tokens"} for u in listed)
    serve(s)


def test_bearer_tokens_are_shown_once_and_can_be_revoked():
    async def s(c, gw):
        st, t = await status_of(c, "POST", "/api/v1/users/alice/tokens", ROOT)
        assert st == 201 and t["token"].startswith("chorus_alice.")
        assert t["token"].rpartition(".")[2] not in str(gw.users_["alice"])  # only its hash is kept
        bearer = {"Authorization": f"Bearer {t['token']}"}
        assert (await status_of(c, "GET", "/api/v1/whoami", bearer))[1]["name"] == "alice"
        assert (await status_of(c, "GET", f"/api/v1/fetch/{TOPIC}?shard=0", bearer))[0] == 200
        assert (await status_of(c, "GET", "/api/v1/users", bearer))[0] == 403
        assert (await status_of(c, "GET", "/api/v1/users/alice", ROOT))[1]["tokens"] == [t["id"]]
        assert (await status_of(c, "DELETE", f"/api/v1/users/alice/tokens/{t['id']}", ROOT))[0] == 200
        assert (await status_of(c, "GET", "/api/v1/whoami", bearer))[0] == 401
    serve(s)


def test_a_user_over_its_rate_gets_429_with_retry_after_and_others_do_not():
    async def s(c, gw):
        codes = [(await c.get("/api/v1/whoami", headers=ALICE)).status for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and 429 in codes
        r = await c.get("/api/v1/whoami", headers=ALICE)
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        assert "request rate" in (await r.json())["error"]["message"]
        assert (await c.get("/api/v1/whoami", headers=BOB)).status == 200
        assert (await c.get("/api/v1/status")).status == 200  # open endpoints are not counted
    serve(s, requests_per_s=3)
