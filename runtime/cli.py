"""brokerctl: the Chorus command line."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="Chorus: a clustered message broker proven in a deterministic simulator.",
                  no_args_is_help=True, add_completion=False)
console = Console()


@app.callback()
def _root() -> None:
    """Chorus: a clustered message broker proven in a deterministic simulator."""


@app.command()
def version() -> None:
    """Print the Chorus version."""
    from importlib.metadata import PackageNotFoundError, version as v

    try:
        console.print(f"chorus {v('chorus-broker')}")
    except PackageNotFoundError:
        console.print("chorus (not installed)")

def _bug_fields(cls) -> tuple[str, ...]:
    from dataclasses import fields

    return tuple(f.name for f in fields(cls))


def _bug_groups() -> dict[str, tuple[str, ...]]:
    """The names ``--bug`` accepts, read from the bug dataclasses' fields so
    that a new deliberate bug is offered (and documented) by itself."""
    from protocol.mqtt_cluster import MqttBugs
    from protocol.raft import RaftBugs
    from protocol.shard import ShardBugs

    return {"agency (Raft)": _bug_fields(RaftBugs), "shard replication": _bug_fields(ShardBugs),
            "MQTT forwarding": _bug_fields(MqttBugs)}


BUG_GROUPS = _bug_groups()
BUGS = BUG_GROUPS["agency (Raft)"]
SHARD_BUGS = BUG_GROUPS["shard replication"]
MQTT_BUGS = BUG_GROUPS["MQTT forwarding"]
_BUG_LIST = "; ".join(f"{group}: {', '.join(names)}" for group, names in BUG_GROUPS.items())


def _check_bugs(values: List[str]) -> List[str]:
    bad = [b for b in values if b not in BUGS + SHARD_BUGS + MQTT_BUGS]
    if bad:
        raise typer.BadParameter(f"unknown bug {', '.join(map(repr, bad))}; valid names are {_BUG_LIST}")
    return values


def _load(file: Path, bugs: list[str]):
    from protocol.mqtt_cluster import MqttBugs
    from protocol.raft import RaftBugs
    from protocol.shard import ShardBugs
    from sim.scenario import ScenarioError, load

    try:
        scn = load(file)
    except ScenarioError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2)
    raft = [b for b in bugs if b in BUGS]
    shard = [b for b in bugs if b in SHARD_BUGS]
    mqtt = [b for b in bugs if b in MQTT_BUGS]
    if raft:
        scn = scn.with_bugs(RaftBugs(**{b: True for b in raft}))
    if shard:
        scn = scn.with_shard_bugs(ShardBugs(**{b: True for b in shard}))
    if mqtt:
        scn = scn.with_mqtt_bugs(MqttBugs(**{b: True for b in mqtt}))
    return scn


@app.command()
def simulate(
    file: Path = typer.Argument(..., help="scenario YAML file, e.g. scenarios/partition.yml"),
    seed: Optional[int] = typer.Option(None, "--seed", help="run this one seed and print a summary"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="sweep this many seeds"),
    first_seed: int = typer.Option(1, "--first-seed", help="first seed of a sweep"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="write the event trace of a single seed here"),
    jobs: int = typer.Option(0, "--jobs", "-j", help="worker processes for a sweep; 0 means one per core"),
    bug: List[str] = typer.Option([], "--bug", metavar="<name>", callback=_check_bugs, show_default=False,
                                  help="run a deliberately broken protocol, to prove the checkers catch it; "
                                       f"repeatable (--bug A --bug B enables both). Names: {_BUG_LIST}"),
    real: bool = typer.Option(False, "--real", help="run the scenario on real node processes on this machine "
                                                    "(kill -9, SIGSTOP, network namespaces) and check it the same way"),
    time_scale: float = typer.Option(0.4, "--time-scale", help="with --real: real seconds per scenario second"),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="with --real: where the nodes' data goes "
                                                                     "(default: a fresh temporary directory)"),
) -> None:
    """Run a fault scenario in the deterministic simulator (or, with --real, on real processes) and check it."""
    scn = _load(file, bug)
    if seed is not None and seeds is not None:
        console.print("[red]error:[/] give either --seed or --seeds, not both")
        raise typer.Exit(2)
    if real:
        if bug or trace:
            console.print("[red]error:[/] --bug and --trace are for the simulator, not --real")
            raise typer.Exit(2)
        from runtime.realsim_cli import simulate_real

        seed_list = [seed if seed is not None else first_seed] if seeds is None else \
            list(range(first_seed, first_seed + max(1, seeds)))
        raise typer.Exit(simulate_real(console, scn, seed_list, time_scale, work_dir))
    if seeds is None:
        _single(scn, seed if seed is not None else 1, trace)
    else:
        if trace:
            console.print("[red]error:[/] --trace works with a single --seed")
            raise typer.Exit(2)
        if seeds < 1:
            console.print("[red]error:[/] --seeds must be at least 1")
            raise typer.Exit(2)
        _sweep(scn, list(range(first_seed, first_seed + seeds)), jobs)


def _single(scn, seed: int, trace: Optional[Path]) -> None:
    from sim.runner import run

    r = run(scn, seed, str(trace) if trace else None)
    console.print(Panel(f"[bold]{scn.name}[/] seed {seed}\n{scn.description.strip()}", title="brokerctl simulate"))
    tl = Table(title="Timeline (simulated seconds)", show_lines=False)
    tl.add_column("t (s)", justify="right")
    tl.add_column("event")
    rows = [(t, f"[yellow]fault[/] {text}") for t, text in r.faults]
    rows += [(t, f"[cyan]leader[/] {peer} term {term}") for t, peer, term in r.leaders]
    for t, text in sorted(rows, key=lambda x: x[0])[:60]:
        tl.add_row(f"{t:8.3f}", text)
    console.print(tl)
    ops = r.ops
    console.print(f"operations: [green]{ops.get('ok', 0)} ok[/], [red]{ops.get('fail', 0)} failed[/], "
                  f"[yellow]{ops.get('unknown', 0)} unknown[/]")
    if r.commit_latency_ms:
        lat = sorted(r.commit_latency_ms)
        console.print(f"write latency (simulated): p50 {_pct(lat, 50):.1f} ms, p99 {_pct(lat, 99):.1f} ms")
    if r.produce_latency_ms:
        lat = sorted(r.produce_latency_ms)
        console.print(f"produce: {len(lat)} batches acknowledged, latency (simulated) p50 {_pct(lat, 50):.1f} ms, "
                      f"p99 {_pct(lat, 99):.1f} ms; {r.data_stats.get('acked_records', 0)} records; "
                      f"lost at level one: {r.data_stats.get('loss_at_one', 0)}")
    if r.failover_s:
        console.print("shard failover (leader crash -> first acknowledged write): "
                      + ", ".join(f"{x:.2f} s" for x in r.failover_s))
    if r.mqtt_stats:
        m = r.mqtt_stats
        console.print(f"MQTT: {m['acked']} publishes acknowledged; {m['required']} (message, subscriber) pairs "
                      f"required, {m['delivered']} delivered; excused: "
                      + (", ".join(f"{k} {v}" for k, v in sorted(m["excused"].items())) or "none"))
    _verdicts(r)
    speed = r.sim_seconds / r.wall_seconds if r.wall_seconds else 0
    console.print(f"events {r.events}, {r.sim_seconds:.0f} simulated s in {r.wall_seconds:.2f} s "
                  f"({speed:.0f}x real time)")
    if trace:
        console.print(f"trace written to {trace}")
    console.print(f"trace hash: [bold]{r.trace_hash}[/]")
    if not r.ok:
        console.print(f"[red bold]FAILED[/] seed {seed}: replay with\n  {r.replay}")
        raise typer.Exit(1)
    console.print("[green bold]all checks passed[/]")


def _verdicts(r) -> None:
    t = Table(title="Checks")
    t.add_column("check")
    t.add_column("verdict")
    t.add_column("first violation", overflow="fold")
    for name, vs in r.violations.items():
        t.add_row(name, "[green]pass[/]" if not vs else f"[red]FAIL ({len(vs)})[/]",
                  "" if not vs else str(vs[0]).splitlines()[0][:300])
    if r.error:
        t.add_row("harness", "[red]crashed[/]", r.error.strip().splitlines()[-1][:300])
    console.print(t)


def _pct(values: list[float], p: float) -> float:
    from sim.runner import percentile

    return percentile(values, p)


def _sweep(scn, seeds: list[int], jobs: int) -> None:
    from sim.sweep import sweep

    failures = []
    walls, events, sims = [], 0, 0.0
    failovers: list[float] = []
    lost_one = acked = 0
    mqtt_req = mqtt_del = 0
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                  console=console, transient=False) as prog:
        task = prog.add_task(scn.name, total=len(seeds), failed=0)
        for r in sweep(scn, seeds, jobs):
            walls.append(r.wall_seconds)
            failovers.extend(r.failover_s)
            lost_one += r.data_stats.get("loss_at_one", 0)
            acked += r.data_stats.get("acked_records", 0)
            mqtt_req += r.mqtt_stats.get("required", 0)
            mqtt_del += r.mqtt_stats.get("delivered", 0)
            events += r.events
            sims += r.sim_seconds
            if not r.ok:
                failures.append(r)
                prog.console.print(f"[red]seed {r.seed} failed[/] ({', '.join(r.failed_checks())}): {r.replay}")
            prog.update(task, advance=1, failed=len(failures))
    cpu = sum(walls)
    console.print(f"{len(seeds)} seeds, {len(failures)} failed; {events} events; "
                  f"{sims:.0f} simulated s in {cpu:.1f} CPU s ({sims / cpu if cpu else 0:.0f}x real time per core); "
                  f"median run {statistics.median(walls):.2f} s")
    if acked:
        console.print(f"{acked} records acknowledged; {lost_one} acknowledged at level one were lost "
                      "(allowed: the leader died before replicating them)")
    if mqtt_req:
        console.print(f"MQTT: {mqtt_del} of {mqtt_req} required (message, subscriber) deliveries made")
    if failovers:
        fo = sorted(failovers)
        console.print(f"shard failover over {len(fo)} leader crashes: p50 {_pct(fo, 50):.2f} s, "
                      f"p90 {_pct(fo, 90):.2f} s, p99 {_pct(fo, 99):.2f} s, max {fo[-1]:.2f} s (simulated)")
    if failures:
        table = Table(title="Failing seeds")
        table.add_column("seed", justify="right")
        table.add_column("checks")
        table.add_column("replay")
        for r in sorted(failures, key=lambda r: r.seed):
            table.add_row(str(r.seed), ", ".join(r.failed_checks()), r.replay)
        console.print(table)
        raise typer.Exit(1)
    console.print("[green bold]no violation[/]")


@app.command()
def run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML or TOML file (see docs/ARCHITECTURE.md)"),
    nodes: int = typer.Option(1, "--nodes", min=1, max=9, help="start a local cluster of this many nodes"),
    node_id: Optional[str] = typer.Option(None, "--node-id", help="this node's unique name [n1]"),
    join: Optional[str] = typer.Option(None, "--join", help="HOST:PORT (HTTP) of a node of a running cluster"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="where data lives [./data]"),
    host: Optional[str] = typer.Option(None, "--host", help="address the client, MQTT and HTTP ports bind to "
                                                            "(and the cluster ports, without --cluster-host) [127.0.0.1]"),
    client_port: Optional[int] = typer.Option(None, "--client-port", help="binary protocol [7171]"),
    http_port: Optional[int] = typer.Option(None, "--http-port", help="HTTP API [7181]"),
    admin_port: Optional[int] = typer.Option(None, "--admin-port", help="cluster (Thespian admin) port [7191]"),
    mqtt_port: Optional[int] = typer.Option(None, "--mqtt-port", help="MQTT 3.1.1 [1883]; -1: no MQTT listener"),
    cluster_id: Optional[str] = typer.Option(None, "--cluster-id", help="refuse data or peers of another cluster"),
    cluster_secret_file: Optional[str] = typer.Option(
        None, "--cluster-secret-file",
        help="the cluster's secret (cluster.secret in a node's data directory): needed to --join, and by each node "
             "of a new cluster of several --initial-nodes"),
    cluster_host: Optional[str] = typer.Option(None, "--cluster-host",
                                               help="address the cluster ports bind to [--host]"),
    initial_nodes: Optional[str] = typer.Option(None, "--initial-nodes",
                                                help="comma-separated node ids of a new cluster's agency"),
    tls_cert_file: Optional[str] = typer.Option(None, "--tls-cert-file",
                                                help="PEM certificate (with its chain): the client, MQTT and HTTP "
                                                     "ports then speak TLS only"),
    tls_key_file: Optional[str] = typer.Option(None, "--tls-key-file", help="PEM private key of --tls-cert-file"),
    tls_ca_file: Optional[str] = typer.Option(None, "--tls-ca-file",
                                              help="PEM CA bundle the nodes trust for each other's HTTPS "
                                                   "[the certificate itself]"),
    tls_self_signed: bool = typer.Option(False, "--tls-self-signed",
                                         help="TLS with a self-signed certificate for 127.0.0.1/localhost, made "
                                              "in DATA_DIR/tls on first use (needs openssl)"),
    log_level: Optional[str] = typer.Option(None, "--log-level",
                                            help="debug | info | warning | error: logfmt lines in "
                                                 "DATA_DIR/logs/actors.log (and the node's stderr) [warning]"),
) -> None:
    """Run a node (or, with --nodes N, a local cluster) until Ctrl-C / SIGTERM.

    Settings come from defaults, then --config, then CHORUS_<SETTING>
    environment variables (e.g. CHORUS_DATA_DIR), then these flags."""
    from runtime.node import NodeConfig, run_node

    peers = [join] if join else None
    try:
        cfg = NodeConfig.load(str(config) if config else None, node_id=node_id, data_dir=data_dir, host=host,
                              client_port=client_port, http_port=http_port, admin_port=admin_port,
                              mqtt_port=mqtt_port, cluster_id=cluster_id, peers=peers,
                              cluster_secret_file=cluster_secret_file, cluster_host=cluster_host,
                              tls_cert_file=tls_cert_file, tls_key_file=tls_key_file, tls_ca_file=tls_ca_file,
                              tls_self_signed=True if tls_self_signed else None,
                              initial_nodes=initial_nodes.split(",") if initial_nodes else None,
                              log_level=log_level)
    except (OSError, ValueError) as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2)
    if nodes > 1:
        from runtime.local_cluster import run_local_cluster

        raise typer.Exit(run_local_cluster(cfg, nodes))
    from runtime.logfmt import configure_stderr

    configure_stderr(cfg.log_level, cfg.node_id)
    try:
        code = run_node(cfg, say=lambda text: console.print(text, highlight=False))
    except SystemExit as exc:
        if isinstance(exc.code, str):
            console.print(f"[red]{exc.code}[/]")
            raise typer.Exit(2)
        raise
    except OSError as exc:
        console.print(f"[red]cannot start the node:[/] {exc}")
        raise typer.Exit(2)
    raise typer.Exit(code)


@app.command()
def bench(
    case: list[str] = typer.Option(["single", "quorum", "e2e", "e2e1", "failover"], "--case",
                                   help="single | quorum | any (3 nodes, one down: hinted handoff) | e2e (3 nodes) "
                                        "| e2e1 (1 node) | failover | rolling-restart (3 nodes restarted in turn under load) "
                                        "| mqtt-qos0 | mqtt-qos1 (1 node) | mqtt-cross (QoS 1, 3 nodes) (repeatable; "
                                        "any, rolling-restart and the mqtt cases run only when named)"),
    messages: int = typer.Option(200_000, "--messages", min=1000, help="messages per throughput case"),
    size: int = typer.Option(100, "--size", min=8, max=1 << 20, help="message size in bytes"),
    rate: int = typer.Option(10_000, "--rate", min=1, help="messages/s of the end-to-end case"),
    seconds: float = typer.Option(10.0, "--seconds", min=1.0, help="duration of the end-to-end and MQTT cases"),
    json_out: str = typer.Option(None, "--json", help="also write the results to this JSON file"),
    mqtt_size: int = typer.Option(128, "--mqtt-size", min=8, max=1 << 20, help="MQTT payload size in bytes"),
    mqtt_publishers: int = typer.Option(4, "--mqtt-publishers", min=1, max=1000, help="MQTT publisher connections"),
    mqtt_subscribers: int = typer.Option(4, "--mqtt-subscribers", min=1, max=1000,
                                         help="MQTT subscriber connections"),
    mqtt_window: int = typer.Option(250, "--mqtt-window", min=1, max=30_000,
                                    help="per MQTT publisher: messages sent and not yet received (and, at QoS 1, "
                                         "unacknowledged)"),
    mqtt_inproc: bool = typer.Option(False, "--mqtt-inproc",
                                     help="run the MQTT load generator in this process, not in one of its own"),
) -> None:
    """Start real nodes on 127.0.0.1 and measure throughput, latency and failover.

    With no options it runs every case, each on fresh nodes, with a progress
    bar per case: about a minute on 2 cores.  A quick look:
    brokerctl bench --case single --messages 20000 (a few seconds).  MQTT:
    brokerctl bench --case mqtt-qos0 --case mqtt-qos1 --case mqtt-cross."""
    from runtime.bench import CASES
    from runtime.bench import run as run_bench

    bad = [c for c in case if c not in CASES]
    if bad:
        console.print(f"[red]unknown case(s):[/] {', '.join(bad)}; choose from {', '.join(CASES)}")
        raise typer.Exit(2)
    run_bench(list(dict.fromkeys(case)), messages, size, rate, seconds, json_out,
              mqtt={"size": mqtt_size, "publishers": mqtt_publishers, "subscribers": mqtt_subscribers,
                    "window": mqtt_window, "inproc": mqtt_inproc})


def _register_admin() -> None:
    from runtime.admin_cli import register

    register(app)


_register_admin()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
