"""Users and permissions, the pure parts (protocol/users.py) and the
listener-side helpers (runtime/authn.py): hashing, verification, roles,
permission decisions, user changes, the verification cache, the rate
limiter and the admin bootstrap."""
from __future__ import annotations

import asyncio
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import frames as fr
from protocol.agency import AgencyReply, AgencyRequest
from protocol.users import (
    ADMIN,
    Grants,
    UserError,
    check_name,
    check_password,
    credential_key,
    denial,
    hash_password,
    make_token,
    mqtt_allows,
    mqtt_tenant,
    new_record,
    parse_role,
    parse_token,
    plan_change,
    public_view,
    tenant_of,
    token_hash,
    verify_password,
    verify_token,
)
from runtime.authn import (
    ADMIN_PASSWORD_FILE,
    Authenticator,
    RateLimiter,
    bootstrap_admin,
    filter_metadata,
    frame_needs,
    read_admin_password,
)

FAST = {"n": 16, "r": 1, "p": 1}  # cheap scrypt parameters for tests; records keep theirs


def user(name: str, password: str = "correct horse", roles=()) -> dict:
    return new_record(name, hash_password(password, b"s" * 16, **FAST), roles)


# ----------------------------------------------------------------- hashing

@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_a_password_verifies_and_any_other_does_not(password, other):
    rec = new_record("u", hash_password(password, os.urandom(16), **FAST))
    assert verify_password(rec, password)
    assert verify_password(rec, other) == (other == password)


def test_the_record_stores_salt_parameters_and_hash_never_the_password():
    rec = new_record("alice", hash_password("s3cret-pw", b"\x01" * 16), ["produce:acme"])
    assert set(rec["password"]) == {"salt", "n", "r", "p", "hash"}
    assert rec["password"]["n"] == 1 << 14 and rec["password"]["salt"] == "01" * 16
    assert "s3cret-pw" not in repr(rec)
    assert public_view(rec) == {"name": "alice", "roles": ["produce:acme"], "tokens": []}


def test_same_password_with_another_salt_hashes_differently():
    a = hash_password("pw-pw-pw-pw", b"a" * 16, **FAST)
    b = hash_password("pw-pw-pw-pw", b"b" * 16, **FAST)
    assert a["hash"] != b["hash"]


@pytest.mark.parametrize("bad", [{}, {"password": {"salt": "zz", "hash": "00", "n": 16, "r": 1, "p": 1}},
                                 {"password": {"salt": "00", "hash": "00", "n": 3, "r": 1, "p": 1}}, None])
def test_malformed_records_never_verify(bad):
    assert verify_password(bad, "anything") is False


def test_credential_key_changes_with_user_password_and_record():
    a, b = user("a"), user("a", "another one")
    k = credential_key("a", "correct horse", a)
    assert k == credential_key("a", "correct horse", a)
    assert k != credential_key("a", "correct horsf", a)
    assert k != credential_key("b", "correct horse", a)
    assert k != credential_key("a", "correct horse", b)


def test_tokens_round_trip_and_only_the_right_secret_verifies():
    tok = make_token("bob.smith", "abcd", "s3-cr_et")
    assert parse_token(tok) == ("bob.smith", "abcd", "s3-cr_et")
    rec = plan_change({"bob.smith": user("bob.smith")}, "add_token", "bob.smith",
                      {"id": "abcd", "sha256": token_hash("s3-cr_et")})
    assert verify_token(rec, "abcd", "s3-cr_et")
    assert not verify_token(rec, "abcd", "s3-cr_eu") and not verify_token(rec, "abce", "s3-cr_et")
    assert parse_token("Bearer-ish") is None and parse_token("chorus_x") is None


# ------------------------------------------------------------------- roles

@pytest.mark.parametrize("role, parsed", [("admin", ("admin", "")), ("produce:acme", ("produce", "acme")),
                                          ("consume:*", ("consume", "*")), ("manage:a.b-c_d", ("manage", "a.b-c_d"))])
def test_roles_parse(role, parsed):
    assert parse_role(role) == parsed


@pytest.mark.parametrize("role", ["", "root", "produce", "produce:", "read:acme", "produce:a/b", "produce:..",
                                  "Admin", "consume:acme:x", 7, None, "manage:" + "x" * 65])
def test_bad_roles_are_refused_with_the_accepted_forms(role):
    with pytest.raises(UserError) as e:
        parse_role(role)
    assert e.value.status == 400 and "ACTION:TENANT" in e.value.message


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "x" * 65, 5])
def test_bad_names(name):
    with pytest.raises(UserError):
        check_name(name)


def test_passwords_must_have_a_sane_length():
    with pytest.raises(UserError):
        check_password("short")
    assert check_password("long enough")


tenants = st.sampled_from(["acme", "globex", "initech", "*"])
actions = st.sampled_from(["produce", "consume", "manage"])


@given(st.sets(st.tuples(actions, tenants)), actions, st.sampled_from(["acme", "globex", "initech"]))
def test_a_grant_allows_exactly_its_action_on_its_tenant_or_every_tenant(pairs, action, tenant):
    g = Grants.of({"name": "u", "roles": [f"{a}:{t}" for a, t in pairs]})
    assert g.allows(action, tenant) == ((action, tenant) in pairs or (action, "*") in pairs)
    assert g.allows("describe", tenant) == any(t in (tenant, "*") for _, t in pairs)
    assert not g.allows("admin", tenant)


def test_admin_allows_everything_and_unknown_roles_grant_nothing():
    g = Grants.of({"name": "root", "roles": ["admin"]})
    assert g.allows("produce", "x") and g.allows("admin", "") and g.mqtt_usable and g.sees_every_tenant()
    odd = Grants.of({"name": "u", "roles": ["superuser", "produce:acme"]})
    assert odd.tenants == frozenset({("produce", "acme")}) and not odd.admin


def test_manage_alone_is_no_use_over_mqtt():
    assert not Grants.of({"name": "m", "roles": ["manage:acme"]}).mqtt_usable
    assert Grants.of({"name": "c", "roles": ["consume:acme"]}).mqtt_usable


@pytest.mark.parametrize("name, tenant", [("acme/a/b", "acme"), ("+/temp", "*"), ("#", "*"), ("home", "home"),
                                          ("$share/g/acme/#", "acme"), ("$share/g/+/x", "*"), ("$SYS/x", "$SYS"),
                                          ("/leading", "")])
def test_mqtt_tenant(name, tenant):
    assert mqtt_tenant(name) == tenant


def test_mqtt_decisions():
    a = Grants.of({"name": "a", "roles": ["produce:acme", "consume:acme"]})
    star = Grants.of({"name": "s", "roles": ["consume:*"]})
    root = Grants.of({"name": "r", "roles": ["admin"]})
    assert mqtt_allows(a, "produce", "acme/sensors/1") and mqtt_allows(a, "consume", "acme/#")
    assert not mqtt_allows(a, "consume", "globex/#") and not mqtt_allows(a, "consume", "#")
    assert not mqtt_allows(a, "consume", "+/sensors")
    assert mqtt_allows(star, "consume", "#") and mqtt_allows(star, "consume", "+/x")
    assert not mqtt_allows(star, "produce", "acme/x")
    assert not mqtt_allows(star, "consume", "$SYS/#") and mqtt_allows(root, "consume", "$SYS/#")


def test_denials_say_who_what_and_which_role_would_do():
    g = Grants.of({"name": "alice", "roles": []})
    assert denial(g, "produce", "acme") == ("permission denied: user 'alice' may not produce on tenant 'acme' "
                                            "(needs role produce:acme)")
    assert "admin" in denial(g, "admin", "")
    assert "consume:acme" in denial(g, "describe", "acme")


def test_tenant_of_a_topic_is_its_first_part():
    assert tenant_of("acme/shop/web/orders") == "acme"


# ---------------------------------------------------------- user changes

def test_create_grant_revoke_passwd_delete():
    users: dict = {"admin": user("admin", roles=[ADMIN])}
    rec = plan_change(users, "create", "alice", user("alice", roles=["produce:acme"]))
    users["alice"] = rec
    with pytest.raises(UserError) as e:
        plan_change(users, "create", "alice", rec)
    assert e.value.status == 409
    users["alice"] = plan_change(users, "grant", "alice", "consume:*")
    assert users["alice"]["roles"] == ["consume:*", "produce:acme"]
    users["alice"] = plan_change(users, "revoke", "alice", "produce:acme")
    assert users["alice"]["roles"] == ["consume:*"]
    with pytest.raises(UserError) as e:
        plan_change(users, "revoke", "alice", "produce:acme")
    assert e.value.status == 404
    new_pw = hash_password("new password", b"n" * 16, **FAST)
    users["alice"] = plan_change(users, "passwd", "alice", new_pw)
    assert verify_password(users["alice"], "new password") and not verify_password(users["alice"], "correct horse")
    assert plan_change(users, "delete", "alice") is None
    with pytest.raises(UserError) as e:
        plan_change(users, "delete", "nobody")
    assert e.value.status == 404 and "no user 'nobody'" in e.value.message
    with pytest.raises(UserError) as e:
        plan_change(users, "grant", "alice", "root")
    assert e.value.status == 400


def test_the_last_admin_can_be_neither_deleted_nor_demoted():
    users = {"admin": user("admin", roles=[ADMIN]), "bob": user("bob")}
    for op, arg in (("delete", None), ("revoke", ADMIN)):
        with pytest.raises(UserError) as e:
            plan_change(users, op, "admin", arg)
        assert e.value.status == 409 and "last admin" in e.value.message
    users["bob"] = plan_change(users, "grant", "bob", ADMIN)
    assert plan_change(users, "delete", "admin") is None
    assert plan_change(users, "revoke", "admin", ADMIN)["roles"] == []


def test_tokens_are_bounded_and_can_be_dropped():
    users = {"u": user("u")}
    for i in range(16):
        users["u"] = plan_change(users, "add_token", "u", {"id": f"t{i}", "sha256": "0" * 64})
    with pytest.raises(UserError):
        plan_change(users, "add_token", "u", {"id": "t99", "sha256": "0" * 64})
    users["u"] = plan_change(users, "drop_token", "u", "t3")
    assert "t3" not in public_view(users["u"])["tokens"]
    with pytest.raises(UserError):
        plan_change(users, "drop_token", "u", "t3")


# --------------------------------------------------- binary-protocol needs

def test_what_each_request_needs():
    t = "acme/shop/web/orders"
    assert frame_needs(fr.ProduceRequest(topic=t, shard=0, batch=b"")) == [("produce", "acme")]
    for m in (fr.FetchRequest(topic=t, shard=0, offset=0),
              fr.SubscribeRequest(topic=t, subscription="s", consumer_id="c"),
              fr.AckRequest(topic=t, shard=0, subscription="s", consumer_id="c", offsets=(1,)),
              fr.CommitRequest(topic=t, shard=0, subscription="s", offset=1)):
        assert frame_needs(m) == [("consume", "acme")]
    assert frame_needs(fr.MetadataRequest(topics=(t, "globex/a/b/c"))) == [("describe", "acme"),
                                                                          ("describe", "globex")]
    assert frame_needs(fr.MetadataRequest()) == []


def test_metadata_of_every_topic_shows_only_the_users_tenants():
    md = fr.MetadataResponse(topics=(fr.TopicMetadata(topic="acme/a/b/c"), fr.TopicMetadata(topic="globex/a/b/c")))
    acme = Grants.of({"name": "a", "roles": ["consume:acme"]})
    assert [t.topic for t in filter_metadata(acme, md).topics] == ["acme/a/b/c"]
    assert filter_metadata(Grants.of({"name": "r", "roles": ["admin"]}), md) is md


# ------------------------------------------------------------ the limiter

def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    rl = RateLimiter(10, burst=5, clock=lambda: now[0])
    assert [rl.take("u") for _ in range(5)] == [0.0] * 5
    wait = rl.take("u")
    assert wait == pytest.approx(0.1)
    assert rl.take("other") == 0.0  # per user
    now[0] += 0.1
    assert rl.take("u") == 0.0 and rl.take("u") > 0
    now[0] += 100
    assert [rl.take("u") for _ in range(5)] == [0.0] * 5  # never more than the burst saved up
    assert rl.take("u") > 0
    assert RateLimiter(0).take("u") == 0.0  # 0: unlimited


def test_debit_goes_into_debt_and_says_for_how_long():
    now = [0.0]
    rl = RateLimiter(100, clock=lambda: now[0])
    assert rl.debit("u", 50) == 0.0
    assert rl.debit("u", 150) == pytest.approx(1.0)
    now[0] += 1.0
    assert rl.debit("u", 0) == 0.0


# ---------------------------------------------------------- verification

def test_verifications_are_cached_by_user_password_and_record(monkeypatch):
    import runtime.authn as authn

    calls = []
    real = authn.verify_password

    def counting(record, password):
        calls.append(password)
        return real(record, password)

    monkeypatch.setattr(authn, "verify_password", counting)
    a = Authenticator()
    a.set_users({"alice": user("alice")})

    async def main():
        assert await a.verify("alice", "correct horse")
        assert await a.verify("alice", "correct horse")
        assert not await a.verify("alice", "wrong horse")
        assert not await a.verify("alice", "wrong horse")
        assert not await a.verify("nobody", "correct horse")
        assert a.check_cached("alice", "correct horse") is True
        # a new password: the old one misses the cache and fails
        a.set_users({"alice": user("alice", "battery staple")})
        assert a.check_cached("alice", "correct horse") is None
        assert not await a.verify("alice", "correct horse")
        assert await a.verify("alice", "battery staple")

    asyncio.run(main())
    a.close()
    assert calls == ["correct horse", "wrong horse", "correct horse", "battery staple"]


def test_grants_follow_the_users_view():
    a = Authenticator()
    a.set_users({"alice": user("alice", roles=["consume:acme"])})
    assert a.grants("alice").allows("consume", "acme")
    a.set_users({"alice": user("alice", roles=[])})
    assert not a.grants("alice").allows("consume", "acme")
    a.set_users({})
    assert a.grants("alice") is None


# -------------------------------------------------------------- bootstrap

class FakeAgency:
    """An agency that applies the bootstrap transaction once, with client sessions."""

    def __init__(self, fail_first: int = 0) -> None:
        self.tree: dict = {}
        self.fail_first = fail_first
        self.applied: dict = {}

    def ask(self, req: AgencyRequest, timeout_s: float):
        from protocol.agency import Read

        if self.fail_first:
            self.fail_first -= 1
            return None if self.fail_first % 2 else AgencyReply(req.client, req.req_id, "fail", error="no leader")
        if isinstance(req.op, Read):
            return AgencyReply(req.client, req.req_id, "ok", {"values": [self.tree.get(p) for p in req.op.paths]})
        key = (req.client, req.req_id)
        if key not in self.applied:
            ok = all(self.tree.get(p.path) is None for p in req.op.preconditions)
            if ok:
                for m in req.op.mutations:
                    self.tree[m.path] = m.value
            self.applied[key] = {"ok": ok}
        return AgencyReply(req.client, req.req_id, "ok", self.applied[key])


def test_exactly_one_node_creates_the_admin_and_keeps_its_password(tmp_path):
    agency = FakeAgency(fail_first=3)
    dirs = [tmp_path / n for n in ("n1", "n2", "n3")]
    for d in dirs:
        d.mkdir()
    results = [bootstrap_admin(agency.ask, d.name, d, timeout_s=30) for d in dirs]
    assert results == ["created", "exists", "exists"]
    pw_file = dirs[0] / ADMIN_PASSWORD_FILE
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    password = pw_file.read_text().strip()
    assert verify_password(agency.tree["/chorus/users/admin"], password)
    assert agency.tree["/chorus/users/admin"]["roles"] == [ADMIN]
    assert [sorted(p.name for p in d.iterdir()) for d in dirs[1:]] == [[], []]
    assert read_admin_password(tmp_path) == password == read_admin_password(dirs[0])
    # a restart changes nothing
    assert bootstrap_admin(agency.ask, "n1", dirs[0]) == "exists"
    assert bootstrap_admin(agency.ask, "n2", dirs[1]) == "exists"
    assert pw_file.read_text().strip() == password


def test_a_crash_between_commit_and_rename_keeps_the_password(tmp_path):
    agency = FakeAgency()
    assert bootstrap_admin(agency.ask, "n1", tmp_path) == "created"
    password = (tmp_path / ADMIN_PASSWORD_FILE).read_text().strip()
    # as if the rename had not happened
    os.replace(tmp_path / ADMIN_PASSWORD_FILE, tmp_path / (ADMIN_PASSWORD_FILE + ".new"))
    assert bootstrap_admin(agency.ask, "n1", tmp_path) == "created"
    assert (tmp_path / ADMIN_PASSWORD_FILE).read_text().strip() == password


def test_no_agency_answer_leaves_it_undecided(tmp_path):
    assert bootstrap_admin(lambda req, t: None, "n1", tmp_path, timeout_s=0.5) == "undecided"
    assert not (tmp_path / ADMIN_PASSWORD_FILE).exists()


def test_node_configuration_of_users():
    from runtime.node import NodeConfig

    cfg = NodeConfig.load(None, env={})
    assert cfg.auth is True and cfg.user_requests_per_s_max == 10_000 and cfg.user_mqtt_publishes_per_s_max == 100_000
    assert NodeConfig.load(None, env={"CHORUS_AUTH": "false"}).auth is False
    assert NodeConfig.load(None, env={"CHORUS_USER_REQUESTS_PER_S_MAX": "0"}).user_requests_per_s_max == 0
    with pytest.raises(ValueError, match="user_requests_per_s_max must be in"):
        NodeConfig.load(None, env={"CHORUS_USER_REQUESTS_PER_S_MAX": "-1"})
