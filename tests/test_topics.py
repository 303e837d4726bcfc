"""protocol.topics: names, specs, shard plans, agency paths."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from protocol.topics import (
    MIN_RETENTION_BYTES,
    ShardPlan,
    TopicName,
    TopicSpec,
    shard_path,
    topic_from_path,
    topic_path,
)

NAME = TopicName.parse("acme/shop/orders/created")
part = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=64).filter(lambda s: s not in (".", ".."))


# -- names -------------------------------------------------------------------------------------------------

def test_parse_and_str_round_trip() -> None:
    assert NAME == TopicName("acme", "shop", "orders", "created")
    assert (NAME.tenant, NAME.product, NAME.component, NAME.topic) == ("acme", "shop", "orders", "created")
    assert str(NAME) == "acme/shop/orders/created"
    assert TopicName.parse(str(NAME)) == NAME
    assert NAME.parts == ("acme", "shop", "orders", "created")


def test_name_is_frozen_and_hashable() -> None:
    with pytest.raises(AttributeError):
        NAME.topic = "x"  # type: ignore[misc]
    assert {NAME: 1}[TopicName.parse("acme/shop/orders/created")] == 1


@given(part, part, part, part)
def test_any_valid_name_round_trips(a: str, b: str, c: str, d: str) -> None:
    n = TopicName(a, b, c, d)
    assert TopicName.parse(str(n)) == n


def test_edge_valid_parts() -> None:
    TopicName("a", "B", "0", "x" * 64)
    TopicName("a.b", "c_d", "e-f", "...")
    TopicName("A-Z.a_z", "09", "-", "_")


@pytest.mark.parametrize("text,fragment", [
    ("acme/shop/orders", "exactly 4 parts"),
    ("acme/shop/orders/created/x", "exactly 4 parts"),
    ("acme", "exactly 4 parts"),
    ("/shop/orders/created", "tenant must not be empty"),
    ("acme//orders/created", "product must not be empty"),
    ("acme/shop/orders/", "topic must not be empty"),
    ("acme/shop/./created", "component must not be '.'"),
    ("acme/../orders/created", "product must not be '..'"),
    ("acme/shop/orders/cre ated", "topic 'cre ated' contains invalid characters ' '"),
    ("ac:me/shop/orders/created", "tenant 'ac:me' contains invalid characters ':'"),
    ("acme/shöp/orders/created", "product"),
    ("acme/shop/" + "c" * 65 + "/created", "component"),
])
def test_invalid_names_are_rejected_naming_the_part(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as e:
        TopicName.parse(text)
    assert fragment in str(e.value)


def test_invalid_part_via_constructor() -> None:
    with pytest.raises(ValueError, match="component"):
        TopicName("a", "b", "x" * 65, "d")
    with pytest.raises(ValueError, match="tenant must be a string"):
        TopicName(1, "b", "c", "d")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TopicName.parse(None)  # type: ignore[arg-type]


# -- specs -------------------------------------------------------------------------------------------------

def spec(**kw) -> TopicSpec:
    base = dict(name=NAME, shards=4, replication_factor=3, retention_ms=86_400_000, retention_bytes=None)
    base.update(kw)
    return TopicSpec(**base)


@pytest.mark.parametrize("shards,rf,mode", [
    (1, 1, "single"), (8, 1, "distributed"), (1, 3, "replicated"), (8, 3, "production"),
    (1024, 7, "production"), (2, 1, "distributed"), (1, 2, "replicated"),
])
def test_mode(shards: int, rf: int, mode: str) -> None:
    assert spec(shards=shards, replication_factor=rf).mode == mode


def test_defaults() -> None:
    s = TopicSpec(NAME)
    assert (s.shards, s.replication_factor, s.retention_ms, s.retention_bytes, s.persistent) == (1, 1, None, None, True)
    assert s.mode == "single"


def test_name_given_as_string_is_parsed() -> None:
    assert TopicSpec("acme/shop/orders/created").name == NAME


@pytest.mark.parametrize("kw,fragment", [
    (dict(shards=0), "shards"),
    (dict(shards=1025), "shards"),
    (dict(shards=2.0), "shards"),
    (dict(shards=True), "shards"),
    (dict(replication_factor=0), "replication_factor"),
    (dict(replication_factor=8), "replication_factor"),
    (dict(retention_ms=999), "retention_ms must be at least 1000"),
    (dict(shard_group_ms=999), "shard_group_ms must be at least 1000"),
    (dict(retention_ms=-1), "retention_ms"),
    (dict(retention_ms="1h"), "retention_ms"),
    (dict(retention_bytes=MIN_RETENTION_BYTES - 1), "retention_bytes must be at least 1048576"),
    (dict(persistent=1), "persistent"),
    (dict(name="a/b/c"), "exactly 4 parts"),
    (dict(name=42), "name must be a TopicName"),
])
def test_spec_validation(kw: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as e:
        spec(**kw)
    assert fragment in str(e.value)


def test_spec_boundaries_accepted() -> None:
    spec(shards=1, replication_factor=1, retention_ms=60_000, retention_bytes=MIN_RETENTION_BYTES)
    spec(shards=1024, replication_factor=7, retention_ms=None, retention_bytes=None, persistent=False)


def test_validate_against_cluster_size() -> None:
    s = spec(replication_factor=3)
    s.validate(3)
    s.validate(9)
    with pytest.raises(ValueError) as e:
        s.validate(2)
    assert "replication_factor 3" in str(e.value) and "has 2" in str(e.value)
    with pytest.raises(ValueError):
        s.validate(0)


def test_spec_json_round_trip() -> None:
    s = spec(retention_bytes=2 * MIN_RETENTION_BYTES, persistent=False)
    j = s.to_json()
    assert j == {"name": "acme/shop/orders/created", "shards": 4, "replication_factor": 3,
                 "retention_ms": 86_400_000, "retention_bytes": 2 * MIN_RETENTION_BYTES, "persistent": False}
    assert TopicSpec.from_json(json.loads(json.dumps(j))) == s


@given(part, st.integers(1, 1024), st.integers(1, 7),
       st.none() | st.integers(60_000, 10**12), st.none() | st.integers(2**20, 10**15), st.booleans())
def test_any_spec_round_trips(topic: str, shards: int, rf: int, rms, rbytes, persistent: bool) -> None:
    s = TopicSpec(TopicName("t", "p", "c", topic), shards, rf, rms, rbytes, persistent)
    assert TopicSpec.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_spec_from_json_is_strict() -> None:
    j = spec().to_json()
    with pytest.raises(ValueError, match=r"unknown topic spec field\(s\) \['colour', 'partitions'\]"):
        TopicSpec.from_json({**j, "partitions": 3, "colour": "red"})
    with pytest.raises(ValueError, match="missing required field 'name'"):
        TopicSpec.from_json({k: v for k, v in j.items() if k != "name"})
    with pytest.raises(ValueError):
        TopicSpec.from_json({**j, "name": ["acme"]})
    with pytest.raises(ValueError):
        TopicSpec.from_json([j])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shards"):
        TopicSpec.from_json({**j, "shards": "4"})
    # optional fields default
    assert TopicSpec.from_json({"name": "a/b/c/d"}) == TopicSpec(TopicName("a", "b", "c", "d"))


def test_alter_rules() -> None:
    s = spec(shards=4, replication_factor=3)
    grown = s.alter(shards=8)
    assert grown.shards == 8 and grown.name == s.name and s.shards == 4
    assert s.alter(shards=4) == s
    with pytest.raises(ValueError, match="shards may only grow"):
        s.alter(shards=2)
    with pytest.raises(ValueError, match="shards"):
        s.alter(shards=2000)
    assert s.alter(replication_factor=1).replication_factor == 1
    assert s.alter(replication_factor=5).mode == "production"
    assert s.alter(retention_ms=None).retention_ms is None
    assert s.alter(retention_ms=120_000, retention_bytes=MIN_RETENTION_BYTES).retention_bytes == MIN_RETENTION_BYTES
    with pytest.raises(ValueError, match="retention_ms"):
        s.alter(retention_ms=10)
    with pytest.raises(ValueError, match="name cannot be altered"):
        s.alter(name=TopicName.parse("acme/shop/orders/deleted"))
    with pytest.raises(ValueError, match="persistent cannot be altered"):
        s.alter(persistent=False)
    assert s.alter(name=str(s.name), persistent=True) == s
    with pytest.raises(ValueError, match="unknown topic spec field 'partitions'"):
        s.alter(partitions=9)


# -- shard plans -------------------------------------------------------------------------------------------

def test_shard_plan_round_trip() -> None:
    p = ShardPlan(replicas=("n2", "n0", "n1"), leader="n2", epoch=3, in_sync=("n2", "n1"))
    j = p.to_json()
    assert j == {"replicas": ["n2", "n0", "n1"], "leader": "n2", "epoch": 3, "in_sync": ["n2", "n1"]}
    assert ShardPlan.from_json(json.loads(json.dumps(j))) == p
    assert p.followers == ("n0", "n1")
    assert not p.fenced
    assert ShardPlan(["a"], "a", 0, ["a"]).replicas == ("a",)  # lists are normalised to tuples


def test_shard_plan_initial_fenced_and_failed_over() -> None:
    p = ShardPlan.initial(("n1", "n2", "n3"))
    assert p == ShardPlan(("n1", "n2", "n3"), "n1", 0, ("n1", "n2", "n3"))
    assert ShardPlan.initial(["n1"], epoch=4).epoch == 4
    # failover: fenced (no leader, epoch+1), then another replica promoted
    fenced = ShardPlan(p.replicas, "", 1, ("n2", "n3"))
    assert fenced.fenced and fenced.followers == ("n1", "n2", "n3")
    promoted = ShardPlan(p.replicas, "n3", 1, ("n2", "n3"))
    assert promoted.followers == ("n1", "n2")
    assert ShardPlan.from_json(promoted.to_json()) == promoted
    assert ShardPlan.from_json(fenced.to_json()) == fenced
    with pytest.raises(ValueError):
        ShardPlan.initial(())


@pytest.mark.parametrize("kw,fragment", [
    (dict(replicas=()), "at least one replica"),
    (dict(replicas=("a", "a")), "duplicate"),
    (dict(leader="z"), "must be one of the replicas"),
    (dict(leader=None), "must be one of the replicas"),
    (dict(epoch=-1), "epoch"),
    (dict(epoch=1.0), "epoch"),
    (dict(in_sync=("a", "z")), "not replicas"),
    (dict(in_sync=("a", "a")), "duplicate"),
    (dict(replicas=("a", "")), "non-empty node id"),
    (dict(replicas="ab"), "tuple of node ids"),
])
def test_shard_plan_validation(kw: dict, fragment: str) -> None:
    base = dict(replicas=("a", "b"), leader="a", epoch=0, in_sync=("a", "b"))
    base.update(kw)
    with pytest.raises(ValueError) as e:
        ShardPlan(**base)
    assert fragment in str(e.value)


def test_shard_plan_from_json_is_strict() -> None:
    j = {"replicas": ["a", "b"], "leader": "b", "epoch": 1, "in_sync": ["b"]}
    with pytest.raises(ValueError, match=r"unknown shard plan field\(s\) \['term'\]"):
        ShardPlan.from_json({**j, "term": 1})
    for key in ("replicas", "leader", "epoch"):
        with pytest.raises(ValueError, match=rf"missing field\(s\) \['{key}'\]"):
            ShardPlan.from_json({k: v for k, v in j.items() if k != key})
    with pytest.raises(ValueError, match="must be a list"):
        ShardPlan.from_json({**j, "replicas": "a"})
    with pytest.raises(ValueError, match="must be a list"):
        ShardPlan.from_json({**j, "in_sync": "a"})
    with pytest.raises(ValueError):
        ShardPlan.from_json("{}")  # type: ignore[arg-type]
    # the supervisor's plan documents carry no in_sync: all replicas are taken as in sync
    assert ShardPlan.from_json({"replicas": ["a", "b"], "leader": "", "epoch": 2}) == ShardPlan(
        ("a", "b"), "", 2, ("a", "b"))


# -- agency paths ------------------------------------------------------------------------------------------

def test_paths() -> None:
    assert topic_path(NAME) == "/chorus/topics/acme/shop/orders/created"
    assert topic_path("acme/shop/orders/created") == "/chorus/topics/acme/shop/orders/created"
    assert shard_path(NAME, 0) == "/chorus/plan/shards/acme/shop/orders/created/0"
    assert shard_path(NAME, 17) == "/chorus/plan/shards/acme/shop/orders/created/17"
    assert topic_from_path(topic_path(NAME)) == NAME
    assert shard_path(NAME, 5000) == "/chorus/plan/shards/acme/shop/orders/created/5000"  # a later group
    for bad in (-1, 1 << 40, "1", True):
        with pytest.raises(ValueError):
            shard_path(NAME, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        topic_path("acme/shop/orders")
    with pytest.raises(ValueError):
        topic_from_path("/chorus/plan/shards/acme/shop/orders/created/0")


def test_protocol_topics_imports_only_protocol_and_stdlib() -> None:
    root = Path(__file__).resolve().parents[1]
    for mod in ("topics", "hashing"):
        tree = ast.parse((root / "protocol" / f"{mod}.py").read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for n in names:
                assert n.split(".")[0] not in ("actors", "storage", "sim", "runtime"), (mod, n)
