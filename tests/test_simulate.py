"""``dispatcher simulate`` (issue 17): known answers, reproducibility, the report, bad inputs, calibration."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_fixtures import DEMO, Proc

from dispatcher.cli import main
from dispatcher.simulate import Variant, WorkloadError, apply_variant, parse_workload, run_variants, simulate
from dispatcher.simulate.journal import calibrate, load_journal

TWO_AGENTS: dict[str, Any] = {
    "simulation": {"seed": 3, "hours": 8, "drain_hours": 1},
    "shops": [
        {
            "shop_id": "s",
            "settings": {"strategy": "CAPACITY_ROUND_ROBIN", "affinity_window_ms": 1},
            "arrivals": {"total": 800, "messages": 1},
            "agents": [
                {"agent_id": "s:a", "capacity": 30, "reply_delay": 5, "handle_time": 60},
                {"agent_id": "s:b", "capacity": 10, "reply_delay": 5, "handle_time": 60},
            ],
        }
    ],
}


def _received(run: Any) -> dict[str, int]:
    return {agent: n for (_shop, agent), n in run.received.items()}


def test_capacity_round_robin_shares_the_load_3_to_1() -> None:
    scenario = parse_workload(TWO_AGENTS)
    run = simulate(scenario)
    got = _received(run)
    assert got["s:a"] + got["s:b"] == 800
    assert got["s:a"] / got["s:b"] == pytest.approx(3.0, rel=0.05)


def test_fewest_today_floods_the_agent_who_comes_online_late() -> None:
    data = json.loads(json.dumps(TWO_AGENTS))
    shop = data["shops"][0]
    shop["settings"]["strategy"] = "FEWEST_TODAY"
    shop["agents"][0]["online"] = [["00:00", "24:00"]]
    shop["agents"][1]["online"] = [["04:00", "24:00"]]
    shop["agents"][1]["capacity"] = 30
    run = simulate(parse_workload(data), keep_decisions=True)
    late = [agent for _s, _c, _r, agent in run.decisions[400:500]]  # the arrivals right after 04:00
    assert late.count("s:b") >= 90  # it takes the burst: its today count starts at 0
    # Under LEAST_SATURATION the same arrivals are shared.
    shop["settings"]["strategy"] = "LEAST_SATURATION"
    even = [agent for _s, _c, _r, agent in simulate(parse_workload(data), keep_decisions=True).decisions[400:500]]
    assert even.count("s:b") < 70


def test_same_seed_same_metrics_and_variants_differ() -> None:
    scenario = parse_workload(TWO_AGENTS)
    variants = [
        Variant("rr"),
        Variant("fewest", shop={"strategy": 2}),
        Variant("small-a", agents={"s:a": {"capacity": 5}}),
    ]
    first = run_variants(scenario, variants)
    second = run_variants(parse_workload(TWO_AGENTS), variants)
    first.pop("timing_s"), second.pop("timing_s")
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    by_name = {v["name"]: v for v in first["variants"]}
    assert by_name["rr"]["agents"]["s:a"]["received"] != by_name["small-a"]["agents"]["s:a"]["received"]
    assert {r["metric"] for r in first["ranking"]} >= {"jain", "gini", "wait_reply_p90_s"}
    other = run_variants(parse_workload(TWO_AGENTS, seed=99), variants)
    other.pop("timing_s")
    assert json.dumps(other, sort_keys=True) != json.dumps(first, sort_keys=True)


WORKLOAD_TOML = """
[simulation]
seed = 5
hours = 6
[[shops]]
shop_id = "s"
[shops.arrivals]
total = 300
hourly = [1, 2, 4, 4, 2, 1]
returning_share = 0.4
order_states = { NO_ORDER = 0.5, AFTER_SALE = 0.5 }
[[shops.agents]]
agent_id = "s:a"
capacity = 5
reply_delay = { dist = "exponential", mean_s = 30 }
handle_time = { dist = "lognormal", mean_s = 900, sigma = 0.6 }
[[shops.agents]]
agent_id = "s:b"
capacity = 3
online = [["01:00", "05:00"]]
[[shops.groups]]
group_id = "after"
members = ["s:b"]
order_states = ["AFTER_SALE"]
[[variants]]
name = "base"
[[variants]]
name = "fewest-today"
strategy = "FEWEST_TODAY"
[[variants]]
name = "rr-reroute"
strategy = "CAPACITY_ROUND_ROBIN"
shop = { reroute_unanswered_after_ms = 60000, max_queue_wait_ms = 600000 }
agents = { "s:a" = { capacity = 8 } }
"""


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_command_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workload = tmp_path / "w.toml"
    workload.write_text(WORKLOAD_TOML)
    out = tmp_path / "out"
    assert main(["simulate", "--workload", str(workload), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "best per metric" in captured.out and "rr-reroute" in captured.out
    assert "variant 3/3 rr-reroute: done" in captured.err  # progress lines (not a terminal)
    for name in ("load", "waiting", "waits", "spread", "saturation"):
        assert _png_size(out / f"{name}.png") == (1000, 450) or name == "load"
    html = (out / "report.html").read_text()
    for section in ("ranking", "variants", "metrics", "load", "waiting", "waits", "spread", "saturation", "agents"):
        assert f"id='{section}'" in html
    assert html.count("src='data:image/png;base64,") == 5
    metrics = json.loads((out / "metrics.json").read_text())
    assert [v["name"] for v in metrics["variants"]] == ["base", "fewest-today", "rr-reroute"]
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "variant,scope,metric,value" and any(",summary,jain," in line for line in csv_lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[shops]]\nshop_id = 's'\ncolour = 1\n", "shops[0]: unknown key 'colour'"),
        ("[[shops]]\nshop_id = 's'\n[[shops.agents]]\nagent_id = 's:a'\ncapacity = 'x'\n[shops.arrivals]\ntotal = 1\n",
         "shops[0].agents[0].capacity: must be an integer"),
        ("[[shops]]\nshop_id = 's'\n[[shops.agents]]\nagent_id = 's:a'\nreply_delay = { dist = 'gamma', mean_s = 1 }\n",
         "shops[0].agents[0].reply_delay.dist: unknown distribution 'gamma'"),
        ("[[shops]]\nshop_id = 's'\n[[shops.agents]]\nagent_id = 's:a'\n[shops.arrivals]\ntotal = 0\n",
         "no arrivals"),
        ("[[shops]]\nshop_id = 's'\n[[shops.agents]]\nagent_id = 's:a'\n[shops.arrivals]\ntotal = 5\n"
         "[[variants]]\nstrategy = 'FASTEST'\n", "variants[0].strategy: unknown value 'FASTEST'"),
        ("[[shops]\n", "not valid TOML"),
        ("", "no [[shops]]"),
    ],
)  # fmt: skip
def test_bad_workloads_name_the_place(tmp_path: Path, text: str, message: str, capsys: Any) -> None:
    workload = tmp_path / "bad.toml"
    workload.write_text(text)
    assert main(["simulate", "--workload", str(workload), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dispatcher simulate: error: ") and message in err and str(workload) in err
    assert "Traceback" not in err


def test_bad_variant_overrides_and_missing_inputs(tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(WorkloadError, match="unknown agent 's:zz'"):
        apply_variant(parse_workload(TWO_AGENTS), Variant("x", agents={"s:zz": {"capacity": 1}}))
    with pytest.raises(WorkloadError, match="max_capacity"):
        apply_variant(parse_workload(TWO_AGENTS), Variant("x", agents={"s:a": {"capacity": 0}}))
    assert main(["simulate", "--workload", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.toml: no such file" in capsys.readouterr().err
    assert main(["simulate", "--journal", str(tmp_path / "nodir"), "--out", str(tmp_path / "o")]) == 2
    assert "no such data dir" in capsys.readouterr().err


# ------------------------------------------------------------------ journal input and calibration


def _record_traffic(data: Path) -> list[tuple[str, str, int, str]]:
    """A server on the demo bootstrap with a data dir; some traffic; the live decisions."""
    from dispatcher._gen.dispatch.v1 import dispatch_pb2, dispatch_pb2_grpc

    proc = Proc("serve", "--port", "0", "--bootstrap", str(DEMO), "--data-dir", str(data), "--create-data-dir",
                "--log-format", "json")  # fmt: skip
    live: list[tuple[str, str, int, str]] = []
    try:
        with grpc.insecure_channel(proc.target) as channel:
            stub = dispatch_pb2_grpc.DispatchStub(channel)
            sources = ["PRODUCT_PAGE", "ORDER_PAGE", "SHOP_HOME", ""]
            for i in range(40):
                conv = f"c{i}"
                buyer = f"b{i % 13}" if i != 7 else "vip-buyer"
                r = stub.Dispatch(
                    dispatch_pb2.DispatchRequest(shop_id="demo", buyer_id=buyer, conversation_id=conv,
                                                 source=sources[i % 4], order_state=1 + i % 5),
                    timeout=10,
                )  # fmt: skip
                live.append(("demo", conv, int(r.reason), r.agent_id))
                if r.agent_id and i % 3:
                    stub.ReportConversation(
                        dispatch_pb2.ReportConversationRequest(shop_id="demo", conversation_id=conv, event=2,
                                                               agent_id=r.agent_id), timeout=10)  # fmt: skip
                if i % 4 == 1:
                    stub.ReportConversation(
                        dispatch_pb2.ReportConversationRequest(shop_id="demo", conversation_id=conv, event=3),
                        timeout=10,
                    )
                if i == 20:
                    stub.SetPresence(dispatch_pb2.SetPresenceRequest(shop_id="demo", agent_id="demo:bob", presence=3))
                if i == 30:
                    stub.SetPresence(dispatch_pb2.SetPresenceRequest(shop_id="demo", agent_id="demo:bob", presence=1))
        assert proc.finish(signal.SIGTERM) == 0
    finally:
        proc.ensure_dead()
    return live


def test_calibration_replays_the_recorded_decisions_exactly(tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "data"
    live = _record_traffic(data)
    check = calibrate(data)
    assert check.decisions == len(live) and check.exact, check.to_json()
    from dispatcher.simulate.journal import _replay_recorded, replay_events

    # Both the journal's replay and the simulator's event-by-event replay give the server's answers.
    assert _replay_recorded(data, 0).decisions == live
    assert replay_events(data)[0] == live
    scenario = load_journal(data)
    assert len(scenario.arrivals) == 40 and scenario.arrivals[7].buyer_id == "vip-buyer"
    assert scenario.arrivals[1].source == "ORDER_PAGE" and scenario.arrivals[1].order_state == 2
    alice = scenario.behaviour_of("demo", "demo:alice")
    assert alice.reply_delay.kind == "empirical" and alice.reply_delay.samples
    out = tmp_path / "out"
    assert main(["simulate", "--journal", str(data), "--calibrate", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"calibration: {len(live)} recorded decisions replayed: exact" in printed
    assert json.loads((out / "metrics.json").read_text())["calibration"]["exact"] is True


def test_an_empty_journal_is_a_clear_error(tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "data"
    proc = Proc("serve", "--port", "0", "--data-dir", str(data), "--create-data-dir", "--log-format", "json")
    try:
        proc.port()
        assert proc.finish(signal.SIGTERM) == 0
    finally:
        proc.ensure_dead()
    assert main(["simulate", "--journal", str(data), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no conversations to simulate (an empty trace)" in capsys.readouterr().err


def test_the_readme_example_workload_runs_and_shows_the_late_agents_burst(tmp_path: Path) -> None:
    # dispatcher/docs/examples/whatif.toml is the README's example: it must keep working, and
    # keep showing what the README says (FEWEST_TODAY floods the agent who comes online late).
    example = Path(__file__).resolve().parents[1] / "dispatcher" / "docs" / "examples" / "whatif.toml"
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", "simulate", "--workload", str(example), "--out", str(tmp_path), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "report.html").exists() and (tmp_path / "load.png").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    by_name = {v["name"]: v["agents"]["demo:dave"] for v in metrics["variants"]}
    assert set(by_name) == {"least-saturation", "fewest-today", "capacity-round-robin"}
    # dave, online from 13:00, is driven to full capacity under FEWEST_TODAY only.
    assert by_name["fewest-today"]["saturated_share"] > 5 * by_name["least-saturation"]["saturated_share"]
    assert by_name["fewest-today"]["received"] > by_name["least-saturation"]["received"]
