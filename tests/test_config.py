"""Server settings from flags, DISPATCH_* variables and a TOML --config file: flags > env > file > defaults."""

from __future__ import annotations

import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from server_fixtures import DEMO, Proc

from dispatch_client import DispatchClient, pb
from dispatcher.cli import build_parser
from dispatcher.config import ENV_VARS, ServeSettings, settings_from_args


def settings(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ServeSettings:
    for name in ENV_VARS.values():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    full = ["serve", *argv]
    return settings_from_args(build_parser(full).parse_args(full))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings([], {}, monkeypatch)
    assert (s.host, s.port, s.reflection, s.metrics_port, s.metrics_host, s.config) == (
        "127.0.0.1",
        50051,
        True,
        0,
        "",
        None,
    )


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "dispatch.toml"
    config.write_text(
        'port = 6001\nseed = 7\nlog-format = "console"\nmetrics_port = 9101\nreflection = false\ngrace = 2.5\nno_auth = true\n'
    )
    s = settings(["--config", str(config)], {}, monkeypatch)
    assert (s.port, s.seed, s.log_format, s.metrics_port, s.reflection, s.grace, s.no_auth) == (
        6001,
        7,
        "console",
        9101,
        False,
        2.5,
        True,
    )
    assert s.host == "127.0.0.1" and s.config == config  # not in the file: the default
    # env wins over the file
    s = settings(["--config", str(config)], {"DISPATCH_PORT": "6002", "DISPATCH_REFLECTION": "true"}, monkeypatch)
    assert (s.port, s.reflection, s.seed) == (6002, True, 7)
    # a flag wins over both, before or after --config
    s = settings(["--port", "6003", "--config", str(config), "--reflection"], {"DISPATCH_PORT": "6002"}, monkeypatch)
    assert (s.port, s.reflection) == (6003, True)
    # the file named by $DISPATCH_CONFIG
    s = settings([], {"DISPATCH_CONFIG": str(config)}, monkeypatch)
    assert (s.port, s.metrics_port) == (6001, 9101)
    s = settings(["--no-reflection"], {"DISPATCH_REFLECTION": "1"}, monkeypatch)
    assert s.reflection is False


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("colour = 1\n", ["unknown setting 'colour'", "metrics_port"]),
        ("port = \n", ["dispatch.toml"]),
        ("[serve]\nport = 1\n", ["unknown setting 'serve'"]),
        ("port = 70000\n", ["70000"]),
        ('reflection = "maybe"\n', ["reflection", "maybe"]),
    ],
)
def test_bad_config_files_are_refused_naming_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], text: str, words: list[str]
) -> None:
    config = tmp_path / "dispatch.toml"
    config.write_text(text)
    with pytest.raises(SystemExit) as exc:
        settings(["--config", str(config)], {}, monkeypatch)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err


def test_missing_config_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        settings(["--config", str(tmp_path / "absent.toml")], {}, monkeypatch)
    assert "absent.toml" in capsys.readouterr().err


def test_help_lists_every_flag_with_its_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for env in ENV_VARS.values():
        assert f"${env}" in text, env
    for flag in ("--config", "--no-reflection", "--metrics-port", "--metrics-host"):
        assert flag in text
    assert "[$DISPATCH_METRICS_PORT, 0]" in text and "[$DISPATCH_REFLECTION, on]" in text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_served_from_a_config_file_with_metrics(tmp_path: Path) -> None:
    metrics_port = free_port()
    config = tmp_path / "dispatch.toml"
    config.write_text(
        f'port = 0\nmetrics_port = {metrics_port}\nbootstrap = "{DEMO}"\nlog_format = "json"\nno_auth = true\n'
    )
    proc = Proc("serve", "--config", str(config))
    try:
        port = proc.port()
        started = [e for e in proc.events() if e["event"] == "server.started"][0]
        assert started["metrics_port"] == metrics_port and started["reflection"] is True
        with DispatchClient(f"127.0.0.1:{port}") as client:
            client.dispatch("demo", "buyer-1", "conv-1", order_state=pb.OrderState.ORDER_STATE_NO_ORDER)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'dispatch_decisions_total{reason="group",strategy="least_saturation"} 1.0' in text
        assert "dispatch_agents_online 3.0" in text
        assert proc.finish(signal.SIGTERM) == 0
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
