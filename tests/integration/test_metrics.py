"""GET /metrics: valid Prometheus text (promtool), counters match the events."""
import json
import os
import re
import sqlite3
import subprocess

import requests

from conftest import SLOW


def scrape(srv, key):
    r = requests.get(f"{srv.api_url}/metrics", headers={"Authorization": f"Bearer {key}"},
                     timeout=10 * SLOW)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return r.text


def value(text, name, labels=""):
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_metrics_valid_and_consistent_with_events(server):
    key = server.create_key("--scope", "send", "--scope", "read", "--scope", "admin")
    h = {"Authorization": f"Bearer {key}"}
    r = requests.post(f"{server.api_url}/v1/suppressions", headers=h, timeout=10 * SLOW,
                      json={"email": "gone@example.org", "reason": "manual"})
    assert r.status_code in (200, 201), r.text
    for to in (["a@example.org"], ["b@example.org", "gone@example.org"], ["c@example.org"]):
        r = requests.post(f"{server.api_url}/v1/messages", headers=h, timeout=10 * SLOW,
                          json={"from": "app@example.com", "to": to, "subject": "s", "text": "t"})
        assert r.status_code == 202, r.text
    # A refused request is counted by reason.
    r = requests.post(f"{server.api_url}/v1/messages", headers=h, timeout=10 * SLOW,
                      json={"from": "app@example.com", "to": "not an address", "subject": "s", "text": "t"})
    assert r.status_code == 422
    requests.get(f"{server.api_url}/v1/events", headers={"Authorization": "Bearer ph_bad"}, timeout=10)

    text = scrape(server, key)
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr

    con = sqlite3.connect(os.path.join(server.spool_dir, "spool.db"))
    counts = dict(con.execute("SELECT type, COUNT(*) FROM events GROUP BY type").fetchall())
    con.close()
    assert value(text, "posthaste_messages_accepted_total", '{ingress="api"}') == 3
    assert value(text, "posthaste_recipient_events_total", '{type="accepted"}') == counts["accepted"] == 3
    assert value(text, "posthaste_recipient_events_total", '{type="suppressed"}') == counts["suppressed"] == 1
    stats = json.loads(server.cli("queue", "stats", "--json").stdout)
    assert value(text, "posthaste_queue_depth", '{state="queued"}') == stats["queued"] == 3
    assert value(text, "posthaste_queue_depth", '{state="suppressed"}') == 1
    assert value(text, "posthaste_commit_latency_seconds_count") >= 1
    assert value(text, "posthaste_acceptance_latency_seconds_count") == 3
    assert value(text, "posthaste_oldest_queued_age_seconds") >= 0
    assert value(text, "posthaste_auth_failures_total", '{ingress="api"}') >= 1
    assert sum(float(v) for v in re.findall(r"^posthaste_rejected_total\{[^}]*\} (\S+)$", text, re.M)) >= 1
    for gauge in ('posthaste_connections_open{direction="in"}', 'posthaste_connections_open{direction="out"}'):
        assert gauge in text


def test_metrics_need_a_read_key(server):
    r = requests.get(f"{server.api_url}/metrics", timeout=10 * SLOW)
    assert r.status_code == 401
    send_only = server.create_key("--scope", "send")
    r = requests.get(f"{server.api_url}/metrics", headers={"Authorization": f"Bearer {send_only}"},
                     timeout=10 * SLOW)
    assert r.status_code == 403


def test_delivery_metrics_count_outcomes(make_server):
    """delivered / bounced hard and soft / delivery latency / outbound connections."""
    from delivery_receivers import (Dnsmasq, ScriptedSMTP, delivery_sections, free_port_on,
                                    loopback_net, submit, wait_states)
    pre = loopback_net()
    mx_ip = pre + "2"
    port = free_port_on([mx_ip])
    dns = Dnsmasq(pre + "1", ["--mx-host=s.test,mx.s.test,10", f"--host-record=mx.s.test,{mx_ip}"]).start()
    answers = {"ok@s.test": None, "gone@s.test": "550 5.1.1 user unknown",
               "full@s.test": "552 5.2.2 mailbox full"}
    rx = ScriptedSMTP(mx_ip, port, rcpt=lambda a: answers[a]).start()
    try:
        srv = make_server(delivery_sections(dns.server, port))
        key = srv.create_key("--scope", "read")
        [msg] = submit(srv, 1, "app@src.test", list(answers), ingress="api")
        wait_states(srv, msg, {"ok@s.test": "delivered", "gone@s.test": "bounced",
                               "full@s.test": "bounced"})
        text = scrape(srv, key)
        p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        assert value(text, "posthaste_recipient_events_total", '{type="delivered"}') == 1
        assert value(text, "posthaste_recipient_events_total", '{type="bounced"}') == 2
        assert value(text, "posthaste_bounced_total", '{kind="hard"}') == 1
        assert value(text, "posthaste_bounced_total", '{kind="soft"}') == 1
        assert value(text, "posthaste_delivery_latency_seconds_count") == 1
    finally:
        rx.stop()
        dns.stop()
