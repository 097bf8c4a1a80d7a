"""dispatcher.logging: structlog as JSON lines (default) or console, one line per event."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from dispatcher.logging import configure_logging


@pytest.fixture(autouse=True)
def _restore_structlog():
    """configure_logging is process-wide: leave structlog as the next test expects it."""
    yield
    structlog.reset_defaults()


def test_json_lines_carry_the_event_and_its_ids() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    structlog.get_logger().info("agent.presence", shop_id="s1", agent_id="s1:a", conversation_id="c1")
    structlog.get_logger().debug("hidden")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "agent.presence"
    assert (record["shop_id"], record["agent_id"], record["conversation_id"]) == ("s1", "s1:a", "c1")
    assert record["level"] == "info" and record["timestamp"].endswith("Z")


def test_console_format_is_for_humans() -> None:
    out = io.StringIO()
    configure_logging("console", "debug", stream=out)
    structlog.get_logger().debug("server.started", port=50051)
    text = out.getvalue()
    assert "server.started" in text and "port=50051" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "chatty")])
def test_bad_settings_are_refused(fmt: str, level: str) -> None:
    with pytest.raises(ValueError):
        configure_logging(fmt, level, stream=io.StringIO())
