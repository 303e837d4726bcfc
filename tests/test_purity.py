"""The hosting contract, enforced: actor code and sans-IO cores never reach
for time, randomness, the OS's entropy, uuids, sockets, threads or sleep.
Those come from the host (see actors/base.py)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BANNED_MODULES = {"time", "random", "socket", "threading", "uuid", "asyncio", "secrets", "select", "selectors",
                  "multiprocessing", "subprocess"}
BANNED_ATTRS = {("os", "urandom"), ("os", "getrandom"), ("datetime", "now"), ("datetime", "utcnow"),
                ("datetime", "today"), ("date", "today")}
BANNED_NAMES = {"sleep", "urandom", "uuid4", "uuid1", "perf_counter", "monotonic", "time_ns"}
# as attributes these are banned on anything (``self.host.monotonic()`` is the
# host's clock and allowed; ``x.sleep()`` never is)
BANNED_ATTR_NAMES = {"sleep", "urandom", "uuid4", "uuid1", "getrandom"}


def violations(source: str, filename: str = "<src>") -> list[str]:
    tree = ast.parse(source, filename)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in BANNED_MODULES:
                    out.append(f"{filename}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")[0]
            if mod in BANNED_MODULES:
                out.append(f"{filename}:{node.lineno}: from {node.module} import ...")
            for a in node.names:
                if a.name in BANNED_NAMES or (mod, a.name) in BANNED_ATTRS:
                    out.append(f"{filename}:{node.lineno}: from {node.module} import {a.name}")
        elif isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Name) and (base.id, node.attr) in BANNED_ATTRS:
                out.append(f"{filename}:{node.lineno}: {base.id}.{node.attr}")
            if node.attr in BANNED_ATTR_NAMES:
                out.append(f"{filename}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in BANNED_NAMES:
            out.append(f"{filename}:{node.lineno}: {node.id}")
    return out


def actor_sources() -> list[Path]:
    files = sorted((ROOT / "actors").rglob("*.py"))
    files.append(ROOT / "sim" / "workload.py")  # the simulated clients are actors too
    files.append(ROOT / "sim" / "mqtt_client.py")
    return files


@pytest.mark.parametrize("path", actor_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_actor_code_is_pure(path: Path) -> None:
    assert violations(path.read_text(), str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize("snippet", [
    "import time\n",
    "import random\nx = random.random()\n",
    "from time import sleep\n",
    "import os\nos.urandom(8)\n",
    "from uuid import uuid4\n",
    "import socket\n",
    "import threading\n",
    "from datetime import datetime\ndatetime.now()\n",
    "self.host.sleep(1)\n",
])
def test_checker_flags_impure_code(snippet: str) -> None:
    assert violations(snippet), snippet


def test_checker_allows_host_services() -> None:
    ok = "from datetime import timedelta\nx = self.rng.random() + self.now()\nself.set_timer(0.05, 1)\n"
    assert violations(ok) == []
