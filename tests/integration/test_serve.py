"""`posthaste serve`: start-up, JSON logs, signals, graceful shutdown."""
import json
import os
import signal
import time

from conftest import SLOW, run_cli


def test_starts_logs_json_and_stops_on_sigterm(server):
    ready = server.wait_log("ready")
    assert ready["level"] == "info" and ready["pid"] == server.proc.pid
    assert server.stop() == 0
    lines = server.logs()
    events = [l["event"] for l in lines]
    assert "shutdown_started" in events and events[-1] == "stopped"
    # One JSON object per line, each with the fixed fields.
    for line in lines:
        assert line["event"] != "_raw", line
        assert {"ts", "level", "event"} <= set(line)


def test_sigint_also_drains(server):
    server.signal(signal.SIGINT)
    assert server.proc.wait(timeout=10 * SLOW) == 0
    assert any(l["event"] == "shutdown_started" and l["signal"] == signal.SIGINT
               for l in server.logs())


def test_sighup_rereads_config(server):
    server.sections["server"]["log_level"] = "warn"
    server.write_config()
    server.signal(signal.SIGHUP)
    line = server.wait_log("reloaded")
    assert line["log_level"] == "warn"
    # A broken file on reload is reported and the server keeps running.
    with open(server.config, "a") as f:
        f.write("[smtp]\nbogus = 1\n")
    server.signal(signal.SIGHUP)
    # The server now logs at warn, and reload_failed is an error: visible.
    failed = server.wait_log("reload_failed")
    assert "unknown key 'bogus'" in failed["error"]
    assert server.proc.poll() is None
    assert server.stop() == 0


def test_bad_config_refuses_to_start(make_server):
    srv = make_server(extra={"smtp": {"max_connections": "-1"}}, start=False)
    p = run_cli("serve", config=srv.config, check=False)
    assert p.returncode == 1
    assert f"{srv.config}:" in p.stderr and "max_connections" in p.stderr


def test_secrets_never_logged(make_server, tmp_path):
    secret_file = tmp_path / "relay.pw"
    secret_file.write_text("hunter2-very-secret\n")
    srv = make_server(extra={"delivery": {"relay_password_file": str(secret_file)}})
    token = srv.create_key()
    srv.signal(signal.SIGHUP)
    srv.wait_log("reloaded")
    srv.stop()
    text = open(srv.log_path).read()
    assert "hunter2" not in text
    assert token not in text
