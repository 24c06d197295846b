"""The global concurrency limit on training (``flows/limits.py``) on a real Prefect API (ephemeral):
absent, nothing waits; present, training holds one slot per rank and gives it back; too small, one line."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def test_gpu_slots_without_with_and_below_the_limit(prefect_harness: None) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from data_catalog.settings import ConfigError
    from flows.deploy import set_gpu_slots
    from flows.limits import GPU_LIMIT, gpu_slots

    def active() -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots

    @flow
    def train(ranks: int, probe: bool = True) -> int:
        with gpu_slots(ranks):
            return active() if probe else -1

    assert train(1, probe=False) == -1  # no limit on the API: the block runs at once
    with pytest.raises(ObjectNotFound):
        active()  # and trying to acquire did not create one
    set_gpu_slots(2)
    assert train(2) == 2 and active() == 0  # held while training, given back after
    set_gpu_slots(1)
    with pytest.raises(ConfigError, match="dinoflow-gpu.*per rank: 2"):
        train(2)
