"""The scale scenario, small: both modes complete and meet the goals on a few hundred nodes."""

from __future__ import annotations

import pytest

from sim.kad_scale import Params, direct_scenario, main, service_scenario
from sim.simhost import run


def test_service_mode_small() -> None:
    rows = run(service_scenario(Params(200, 30, 20, (0.3,), seed=5, verbose=False)))
    assert [r.scenario for r in rows] == ["removed 0%", "removed 30%"]
    for row in rows:
        assert row.errors == 0
        assert row.success == 1.0
        assert row.values_found >= 0.95
        assert row.hops_median <= 3
    assert rows[1].alive == 140


def test_direct_mode_small() -> None:
    rows = direct_scenario(Params(2000, 60, 30, (0.1, 0.5), seed=6, verbose=False))
    assert [r.alive for r in rows] == [2000, 1800, 1000]
    assert rows[0].success == 1.0
    assert rows[1].values_found >= 0.95
    assert all(r.msgs_mean > 0 for r in rows)


def test_cli_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--direct", "--nodes", "500", "--lookups", "10", "--values", "5", "-q"])
    out = capsys.readouterr().out
    assert "hops p50" in out
    assert "removed 50%" in out
