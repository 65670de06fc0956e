"""Operator alerts: log line, `alert` event, and mail to admin_email."""
import json
import sqlite3
import subprocess
import os
import time

from conftest import BIN, SLOW


def drop(srv, rcpt, sender="app@example.com"):
    e = dict(os.environ)
    e.pop("POSTHASTE_KEY", None)
    msg = f"From: {sender}\nTo: {rcpt}\nSubject: hello\n\nhi\n".encode()
    p = subprocess.run([BIN, "sendmail", "-C", srv.config, "-f", sender, rcpt], input=msg,
                       capture_output=True, env=e, timeout=30 * SLOW)
    assert p.returncode == 0, p.stderr


def alert_events(srv):
    con = sqlite3.connect(os.path.join(srv.spool_dir, "spool.db"))
    rows = con.execute("SELECT data FROM events WHERE type = 'alert' ORDER BY id").fetchall()
    con.close()
    return [json.loads(d) for (d,) in rows]


def test_queue_age_alert_logged_recorded_and_mailed(make_server):
    srv = make_server(extra={
        "alerts": {"interval": "100ms", "queue_age": "1s", "repeat": "1h",
                   "admin_email": "ops@example.org", "key_rate_factor": "0"},
        "sendmail": {"pickup_interval": "100ms"}})
    drop(srv, "someone@example.com")  # delivery is paused: it will wait
    line = srv.wait_log("alert", timeout=15, pred=lambda l: l.get("kind") == "queue_age")
    assert "oldest undelivered message" in line["message"]
    deadline = time.monotonic() + 5 * SLOW  # the event commits just after the log line
    while not (evs := [e for e in alert_events(srv) if e["kind"] == "queue_age"]):
        assert time.monotonic() < deadline, "no alert event recorded"
        time.sleep(0.05)
    assert evs[0]["age_seconds"] >= 1
    srv.wait_log("alert_mailed", timeout=10)
    msgs = json.loads(srv.cli("queue", "list", "--json").stdout)
    admin = [m for m in msgs if m["ingress"] == "alert"]
    assert len(admin) == 1
    assert admin[0]["mail_from"] == "" and admin[0]["recipients"][0]["email"] == "ops@example.org"
    raw = subprocess.run([BIN, "queue", "show", admin[0]["id"], "--raw", "-c", srv.config],
                         capture_output=True, check=True).stdout
    assert b"Subject: [Posthaste alert] queue_age" in raw
    # Still true, but not raised again before `repeat`.
    time.sleep(0.5 * SLOW)
    assert len([e for e in alert_events(srv) if e["kind"] == "queue_age"]) == 1


def test_no_alert_below_thresholds(make_server):
    srv = make_server(extra={
        "alerts": {"interval": "100ms", "queue_age": "1h", "key_rate_factor": "0"},
        "sendmail": {"pickup_interval": "100ms"}})
    drop(srv, "someone@example.com")
    time.sleep(1.0 * SLOW)
    assert alert_events(srv) == []
    assert not [l for l in srv.logs() if l.get("event") == "alert"]


def test_key_rate_jump(make_server):
    srv = make_server(extra={
        "alerts": {"interval": "100ms", "queue_age": "0", "key_rate_min": "3", "window": "1m"}})
    key = srv.create_key()
    import requests
    for i in range(3):
        r = requests.post(f"{srv.api_url}/v1/messages", timeout=10 * SLOW,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"from": "app@example.com", "to": f"u{i}@example.org",
                                "subject": "x", "text": "y"})
        assert r.status_code == 202, r.text
    line = srv.wait_log("alert", timeout=15, pred=lambda l: l.get("kind") == "key_rate")
    assert key.split("_")[1] in line["message"]
