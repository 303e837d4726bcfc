"""A rolling restart of a real three-node cluster under load: each node in
turn is stopped with SIGTERM and started again while a producer writes at
``quorum`` and a consumer reads a durable subscription.  No acknowledged
record may be missing from the log or from what the consumer received, and
both clients must keep making progress after every restart.  The stall
figures are reported by ``brokerctl bench --case rolling-restart``, not
asserted here."""
from __future__ import annotations

import pytest

from runtime.rolling import run_rolling_restart

pytestmark = [pytest.mark.realnet, pytest.mark.slow]  # about 50 s; `brokerctl bench --case rolling-restart` reports the same run


def test_a_rolling_restart_under_load_loses_no_acknowledged_record(tmp_path) -> None:
    restarted: list[int] = []
    res = run_rolling_restart(tmp_path, nodes=3, shards=3, progress=restarted.append)
    assert restarted == [1, 2, 3]
    assert res.acked > 1000, res.row()  # the producer kept writing through the restarts
    assert res.lost_in_log == [], f"acknowledged but not in the log: {res.lost_in_log[:10]} {res.row()}"
    assert res.lost_to_consumer == [], f"acknowledged but never consumed: {res.lost_to_consumer[:10]} {res.row()}"
    assert res.duplicates_in_log == 0, res.row()  # idempotent retries across leader changes
    assert res.failed == 0, res.row()
    assert res.consumed >= res.acked
