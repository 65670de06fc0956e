"""One-click unsubscribe (RFC 2369 + RFC 8058), end to end through the API.

The List-Unsubscribe headers are added by the submit pipeline and signed by
DKIM (dkimpy verifies); GET /u/TOKEN changes nothing; POST suppresses the
recipient for the sender's domain and records `unsubscribed`; a forged or
altered token is refused; the next send to that address is `suppressed`.
"""
import json
import os
import re
import sqlite3
import subprocess

import dkim
import requests

from conftest import BIN, SLOW
from test_dkim_sign import keygen, zone_value  # noqa: F401  (shared helpers)


def start_signed(make_server):
    srv = make_server(start=False)
    path, value = keygen(srv, "example.com", "u2026", "rsa")
    srv.sections["sender example.com"] = {"dkim_selector": "u2026", "dkim_key_file": path}
    srv.sections["api"]["unsubscribe_mailto"] = "unsub.example.com"
    srv.write_config()
    srv.start()
    key = srv.create_key("--scope", "send", "--scope", "read")
    return srv, key, {"u2026._domainkey.example.com.": value}


def send(srv, key, to, **extra):
    body = {"from": "News <news@example.com>", "to": to, "subject": "Weekly", "text": "hello"}
    body.update(extra)
    return requests.post(f"{srv.api_url}/v1/messages", json=body, timeout=10 * SLOW,
                         headers={"Authorization": f"Bearer {key}"})


def raw(srv, msg_id):
    return subprocess.run([BIN, "queue", "show", msg_id, "--raw", "-c", srv.config],
                          capture_output=True, check=True).stdout


def suppressions(srv):
    con = sqlite3.connect(os.path.join(srv.spool_dir, "spool.db"))
    rows = con.execute("SELECT email, scope, reason FROM suppressions").fetchall()
    con.close()
    return rows


def test_one_click_unsubscribe_end_to_end(make_server):
    srv, key, records = start_signed(make_server)
    r = send(srv, key, "reader@example.org", unsubscribe=True)
    assert r.status_code == 202, r.text
    msg_id = r.json()["id"]
    data = raw(srv, msg_id)
    m = re.search(rb"List-Unsubscribe: <(http://[^>]+/u/([A-Za-z0-9_.-]+))>,\r\n "
                  rb"<mailto:unsubscribe\+([A-Za-z0-9_.-]+)@unsub\.example\.com>\r\n", data)
    assert m, data[:800]
    url, token = m.group(1).decode(), m.group(2).decode()
    assert m.group(3).decode() == token
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in data
    # Both headers are covered by the DKIM signature, which verifies.
    h = re.search(rb"(?is)DKIM-Signature:.*?\bh=([^;]+);", data).group(1)
    signed = re.sub(rb"\s+", b"", h).lower().split(b":")
    assert b"list-unsubscribe" in signed and b"list-unsubscribe-post" in signed
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: records.get(name.decode(), "").encode())

    # GET shows a page and changes nothing (link scanners must be harmless).
    g = requests.get(url, timeout=10 * SLOW)
    assert g.status_code == 200 and "text/html" in g.headers["Content-Type"]
    assert "reader@example.org" in g.text and "<form method=\"post\"" in g.text
    assert suppressions(srv) == []

    # A forged or altered token is refused and changes nothing.
    bad = token[:-2] + ("AA" if not token.endswith("AA") else "BA")
    for t in (bad, "x" + token, token.split(".")[0] + ".AAAAAAAAAAAAAAAAAAAAAA"):
        p = requests.post(url.replace(token, t), data="List-Unsubscribe=One-Click", timeout=10 * SLOW,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert p.status_code == 404, (t, p.text)
    assert suppressions(srv) == []

    # RFC 8058 POST: suppressed for this sender domain, event recorded.
    p = requests.post(url, data="List-Unsubscribe=One-Click", timeout=10 * SLOW,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert p.status_code == 200, p.text
    assert suppressions(srv) == [("reader@example.org", "example.com", "unsubscribe")]
    shown = json.loads(srv.cli("queue", "show", msg_id, "--json").stdout)
    assert any(e["type"] == "unsubscribed" and e["recipient"] == "reader@example.org"
               for e in shown["events"])

    # The next message to that address from this domain is not sent.
    r = send(srv, key, "reader@example.org")
    assert r.status_code == 202
    assert r.json()["recipients"] == [{"email": "reader@example.org", "status": "suppressed"}]
    # Another address is unaffected.
    assert send(srv, key, "other@example.org").json()["recipients"][0]["status"] == "queued"


def test_unsubscribe_needs_one_recipient_and_a_boolean(make_server):
    srv, key, _ = start_signed(make_server)
    r = send(srv, key, ["a@example.org", "b@example.org"], unsubscribe=True)
    assert r.status_code == 422 and "one recipient" in r.json()["error"]["message"]
    r = send(srv, key, "a@example.org", unsubscribe="yes")
    assert r.status_code == 422 and r.json()["error"]["field"] == "unsubscribe"
    # Without the flag there is no List-Unsubscribe header.
    r = send(srv, key, "a@example.org")
    assert b"List-Unsubscribe" not in raw(srv, r.json()["id"])


def test_smtp_style_header_request(make_server):
    """X-Posthaste-Unsubscribe: yes (SMTP, sendmail) asks for the same headers."""
    srv, key, _ = start_signed(make_server)
    msg = (b"From: news@example.com\nTo: r@example.org\nSubject: s\n"
           b"X-Posthaste-Unsubscribe: yes\n\nbody\n")
    env = dict(os.environ, POSTHASTE_KEY=key)
    p = subprocess.run([BIN, "sendmail", "-C", srv.config, "-f", "news@example.com", "r@example.org"],
                       input=msg, capture_output=True, env=env, timeout=30 * SLOW)
    assert p.returncode == 0, p.stderr
    (m,) = json.loads(srv.cli("queue", "list", "--json").stdout)
    data = raw(srv, m["id"])
    assert b"List-Unsubscribe: <http://" in data
    assert b"X-Posthaste-Unsubscribe" not in data


def test_bulk_key_always_gets_unsubscribe_links(make_server):
    srv, _, _ = start_signed(make_server)
    bulk = srv.create_key("--bulk")
    r = send(srv, bulk, "reader@example.org")
    assert r.status_code == 202, r.text
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in raw(srv, r.json()["id"])
    r = send(srv, bulk, ["a@example.org", "b@example.org"])
    assert r.status_code == 422
    listed = json.loads(srv.cli("keys", "list", "--json").stdout)
    assert [k["bulk"] for k in listed] == [False, True]
