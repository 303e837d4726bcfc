"""The simulator's checkers over a real run (``runtime/realsim.py``).

Inputs, all in the simulator's format:

* the client-side history (``produce.*``, ``consume.deliver``);
* the Raft peers' ``raft.*`` records, read from the nodes' record files
  (``runtime/recordfile.py``) onto the same time line;
* each node's final shard logs and Raft log, read from its data directory
  after the nodes stopped (the same stores the replicas and the peer use;
  nothing is asked of a running node, so nothing is filtered by it).

The leader and replica set of each shard come from the cluster's own view
at the end (``GET /shards``), taken when every shard was led and in sync.
Its high watermark is taken as the shortest in-sync replica's log end:
stricter than the leader's own, never looser.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sim.history import FinalLog, Violation


def store_path(data_dir: str, name: str) -> Path:
    """Where the production host keeps store ``name`` of a node."""
    return Path(data_dir).resolve() / name.replace("/", "_")


def read_shard_log(data_dir: str, shard: str) -> list[bytes] | None:
    """Every batch of ``shard``'s replica on a stopped node (None: no replica)."""
    from actors.replication import ShardCore
    from storage.rocks import RocksStore
    from storage.shardlog import ShardLog

    try:
        store = RocksStore(store_path(data_dir, f"shard/{shard}"), create=False)
    except FileNotFoundError:
        return None
    try:
        return list(ShardCore.iter_batches(SimpleNamespace(log=ShardLog(store))))  # what the replica itself reads
    finally:
        store.close()


def read_raft_log(data_dir: str) -> FinalLog | None:
    """A stopped node's Raft log as the checkers take it."""
    from actors.raft_core import entry_digest
    from actors.raft_peer import RaftPeer
    from storage.rocks import RocksStore

    try:
        store = RocksStore(store_path(data_dir, "raft"), create=False)
    except FileNotFoundError:
        return None
    try:
        _term, _vote, meta, _data, entries = RaftPeer._load(SimpleNamespace(store=store))
        si, st = (meta.index, meta.term) if meta is not None else (0, 0)
        return FinalLog(si, st, [(e.index, e.term, entry_digest(e)) for e in entries])
    finally:
        store.close()


def _end_offset(batches: list[bytes]) -> int:
    from protocol.records import read_header

    if not batches:
        return 0
    h = read_header(batches[-1])
    return h.base_offset + h.record_count


def judge(run: Any, final_shards: list[dict], t_end: float) -> None:
    """Fill ``run.res`` (violations, figures) from the run's observations."""
    from runtime.recordfile import read_records
    from sim import checkers
    from sim.datachecks import check_data, decode_log

    scn, res, c = run.scn, run.res, run.cluster
    checks = set(scn.checks) - set(res.skipped_checks)
    history = run.hist.snapshot()
    raft = list(read_records(run.base / "records", run.hist.t0, run.scale))
    res.raft_records = len(raft)
    out: dict[str, list[Violation]] = dict(res.violations)
    for name in ("election_safety", "leader_completeness", "state_machine_safety", "committed_never_change"):
        if name in checks:
            out[name] = getattr(checkers, name)(raft)
    if "log_matching" in checks:
        logs = {n: fl for n in run.peers if (fl := read_raft_log(c.cfgs[n].data_dir)) is not None}
        out["log_matching"] = checkers.log_matching(logs)
    if "liveness" in checks:
        out.setdefault("liveness", [])
    shard_logs: dict[str, dict[str, list[bytes]]] = {}
    leaders: dict[str, tuple[str, int]] = {}
    for s in final_shards:
        name, lead = s["shard"], s.get("leader")
        shard_logs[name] = {}
        for n in s.get("replicas", []):
            got = read_shard_log(c.cfgs[n].data_dir, name) if n in c.cfgs else None
            shard_logs[name][n] = got if got is not None else [b"<replica missing>"]
        if lead:
            ends = [_end_offset(shard_logs[name][n]) for n in s.get("in_sync", []) if n in shard_logs[name]
                    and shard_logs[name][n] != [b"<replica missing>"]]
            leaders[name] = (lead, min(ends) if ends else 0)
    # Compare the replicas up to the high watermark: a batch the leader
    # appended after the last replication check (a subscription cursor
    # written while the nodes were being stopped) is an uncommitted tail,
    # not a divergence.  Anything acknowledged beyond it still fails
    # acked_writes_durable, and a difference below it replicas_identical.
    tails = 0
    for name, (_lead, hw) in leaders.items():
        for n, batches in shard_logs[name].items():
            kept = [b for b in batches if b == b"<replica missing>" or _end_offset([b]) <= hw]
            tails += len(batches) - len(kept)
            shard_logs[name][n] = kept
    subs = [sd[0] for sd in scn.data.subscriptions]
    found, stats = check_data(history, shard_logs, leaders, subs)
    stats["uncommitted_tail_batches"] = tails
    out.update({k: v for k, v in found.items() if k in checks})
    if "data_liveness" in checks:
        late = [r for r in history if r.kind == "produce.done" and r.t >= scn.duration_s and r.fields["status"] == "ok"]
        bad = [] if late or not scn.data.producers else [
            Violation("data_liveness", "no write was acknowledged after the faults were healed", {})]
        bad += [Violation("data_liveness", f"shard {s['shard']} has no leader at the end", {})
                for s in final_shards if not s.get("leader")]
        out["data_liveness"] = bad
    res.violations = out
    res.data_stats = stats
    # the figures, uncapped: acknowledged, lost (strong levels), lost (weak levels, allowed)
    present: dict[str, set[bytes]] = {}
    for name, (lead, _hw) in leaders.items():
        present[name] = {p for _o, p in decode_log(shard_logs[name].get(lead, []))}
    for r in history:
        if r.kind == "produce.done":
            f = r.fields
            if f["status"] != "ok":
                res.failed_sends += 1
                continue
            p = f"{f['producer']}|{f['shard']}|{f['seq']}".encode()
            missing = p not in present.get(f["shard"], set())
            if f["level"] in ("quorum", "all"):
                res.acked += 1
                res.lost += missing
            else:
                res.acked_weak += 1
                res.lost_weak += missing
        elif r.kind == "consume.deliver":
            res.deliveries += 1
    res.data_stats["history_end_s"] = round(t_end, 2)


def report_lines(res: Any) -> list[str]:
    """A plain-text report of one real run (the CLI prints it with colour)."""
    lines = [f"{res.scenario} seed {res.seed} on real processes (time scale {res.time_scale:g}, "
             f"{'network namespaces' if res.netns else 'loopback, no namespaces'}): "
             f"{res.wall_seconds:.0f} s; converged {res.converge_s:.1f} s after the heal"
             + (f" (last waiting on: {res.converge_waited_on})" if res.converge_waited_on else "")]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(res.fault_counts.items())) or "none"
    lines.append(f"faults injected: {counts}" + (f"; {res.skipped_firings} firings skipped" if res.skipped_firings
                                                   else ""))
    for verb, why in sorted(res.skipped_faults.items()):
        lines.append(f"fault not available, skipped: {verb} -- {why}")
    for chk, why in sorted(res.skipped_checks.items()):
        lines.append(f"check not available, skipped: {chk} -- {why}")
    lines.append(f"acknowledged at quorum/all: {res.acked}, lost: {res.lost}; at one/any: {res.acked_weak}, "
                 f"lost: {res.lost_weak} (allowed); sends without an acknowledgement: {res.failed_sends}; "
                 f"deliveries: {res.deliveries}; raft records: {res.raft_records}")
    return lines
