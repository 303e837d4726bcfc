"""Bootstrap configuration that tells an actor how to build its production host."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostConfig:
    """Carried by the first message an actor receives in production.

    ``host_module`` names the module whose ``make_host(config)`` builds the
    host (``runtime.host`` by default); the simulator ignores this and
    supplies its own host through ``_myRef``.
    """

    node_id: str
    data_dir: str
    seed: int | None = None
    host_module: str = "runtime.host"
