"""Signed webhooks: at-least-once delivery with retries, durable cursors.

A real HTTP receiver (http.server on loopback, in a thread) verifies every
signature, fails its first N requests to prove the retry and the per-event
de-duplication ids, and keeps receiving across a server restart.
"""
import hashlib
import hmac
import http.server
import json
import os
import signal
import subprocess
import threading
import time

import requests

from conftest import BIN, SLOW, free_port


class Receiver:
    def __init__(self, fail_first=0, status=500):
        self.port = free_port()
        self.secret = None
        self.fail_first = fail_first
        self.status = status
        self.requests = 0
        self.bad_signatures = 0
        self.events = []       # every event received (duplicates included)
        self.raw = []          # (timestamp, body, signature) of every request
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts = self.headers.get("X-Posthaste-Timestamp", "")
                sig = self.headers.get("X-Posthaste-Signature", "")
                with outer.lock:
                    outer.raw.append((ts, body, sig))
                    outer.requests += 1
                    n = outer.requests
                    if outer.secret:
                        want = "v1=" + hmac.new(outer.secret.encode(), ts.encode() + b"." + body,
                                                hashlib.sha256).hexdigest()
                        if not hmac.compare_digest(want, sig) or abs(time.time() - int(ts)) > 300:
                            outer.bad_signatures += 1
                    if n <= outer.fail_first:
                        self.send_response(outer.status)
                        self.end_headers()
                        return
                    outer.events += json.loads(body)["events"]
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/hooks"

    def unique(self):
        with self.lock:
            return {e["id"]: e for e in self.events}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def api(srv, key, method, path, **kw):
    return requests.request(method, srv.api_url + path, timeout=10 * SLOW,
                            headers={"Authorization": f"Bearer {key}"}, **kw)


def send(srv, key, i):
    r = api(srv, key, "POST", "/v1/messages",
            json={"from": "app@example.com", "to": f"user{i}@example.org", "subject": f"m{i}",
                  "text": "hi", "tags": ["welcome"], "metadata": {"user": str(i)}})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_for(pred, timeout=20):
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


FAST = {"webhooks": {"interval": "50ms", "max_backoff": "300ms", "unhealthy_after": "3",
                     "timeout": "2s"}}


def test_signed_batches_retry_dedup_and_restart(make_server):
    rec = Receiver(fail_first=3)
    srv = make_server(extra=FAST)
    admin = srv.create_key("--scope", "admin", "--scope", "send", "--scope", "read")
    try:
        r = api(srv, admin, "POST", "/v1/webhooks", json={"url": rec.url, "events": ["accepted", "suppressed"]})
        assert r.status_code == 201, r.text
        hook = r.json()
        assert hook["secret"].startswith("whsec_") and hook["events"] == ["accepted", "suppressed"]
        rec.secret = hook["secret"]
        listed = api(srv, admin, "GET", "/v1/webhooks").json()["data"]
        assert [w["id"] for w in listed] == [hook["id"]] and "secret" not in listed[0]

        ids = [send(srv, admin, i) for i in range(5)]
        assert wait_for(lambda: len(rec.unique()) >= 5), (rec.requests, len(rec.events))
        assert rec.requests >= 4  # three failures, then success: it retried
        assert rec.bad_signatures == 0
        got = rec.unique()
        assert {e["message_id"] for e in got.values()} == set(ids)
        ev = next(iter(got.values()))
        assert ev["type"] == "accepted" and ev["tags"] == ["welcome"] and "user" in ev["metadata"]

        # Restart mid-stream: events committed while the server is down are
        # delivered after it starts again, from the durable cursor.
        assert srv.stop() == 0
        srv.start()
        more = [send(srv, admin, i) for i in range(5, 10)]
        assert wait_for(lambda: len(rec.unique()) >= 10)
        assert {e["message_id"] for e in rec.unique().values()} == set(ids + more)
        assert rec.bad_signatures == 0
        dups = len(rec.events) - len(rec.unique())
        assert dups <= 5  # at-least-once: a replay is allowed, a loss is not

        # Delete: nothing more is sent.
        assert api(srv, admin, "DELETE", f"/v1/webhooks/{hook['id']}").status_code == 200
        before = rec.requests
        send(srv, admin, 99)
        time.sleep(0.5 * SLOW)
        assert rec.requests == before
        assert api(srv, admin, "DELETE", f"/v1/webhooks/{hook['id']}").status_code == 404
    finally:
        rec.close()


def test_failing_endpoint_marked_unhealthy_then_recovers(make_server):
    rec = Receiver(fail_first=10 ** 9, status=503)
    srv = make_server(extra=FAST)
    admin = srv.create_key("--scope", "admin", "--scope", "send")
    try:
        r = api(srv, admin, "POST", "/v1/webhooks", json={"url": rec.url})
        rec.secret = r.json()["secret"]
        send(srv, admin, 1)
        assert wait_for(lambda: not api(srv, admin, "GET", "/v1/webhooks").json()["data"][0]["healthy"])
        w = api(srv, admin, "GET", "/v1/webhooks").json()["data"][0]
        assert w["last_error"] == "HTTP 503" and w["failing_since"]
        srv.wait_log("webhook_unhealthy")
        rec.fail_first = 0  # the endpoint comes back
        assert wait_for(lambda: api(srv, admin, "GET", "/v1/webhooks").json()["data"][0]["healthy"])
        assert len(rec.unique()) >= 1 and rec.bad_signatures == 0
    finally:
        rec.close()


def test_batch_given_up_after_retry_window(make_server):
    rec = Receiver(fail_first=10 ** 9)
    extra = {"webhooks": dict(FAST["webhooks"], retry_window="1s")}
    srv = make_server(extra=extra)
    admin = srv.create_key("--scope", "admin", "--scope", "send")
    try:
        r = api(srv, admin, "POST", "/v1/webhooks", json={"url": rec.url})
        rec.secret = r.json()["secret"]
        send(srv, admin, 1)
        line = srv.wait_log("webhook_failed", timeout=15)
        assert line["events"] >= 1 and line["webhook"] == r.json()["id"]
    finally:
        rec.close()


def test_bad_webhook_requests(make_server):
    srv = make_server()
    admin = srv.create_key("--scope", "admin")
    sender = srv.create_key("--scope", "send")
    cases = [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "http://example.com/hook"}, "url"),     # http only on loopback
        ({"url": "https://example.com/h", "events": ["nope"]}, "events[0]"),
        ({"url": "https://example.com/h", "events": []}, "events"),
        ({}, "url"),
    ]
    for body, field in cases:
        r = api(srv, admin, "POST", "/v1/webhooks", json=body)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (body, r.text)
    assert api(srv, sender, "POST", "/v1/webhooks", json={"url": "https://example.com/h"}).status_code == 403
    assert api(srv, admin, "GET", "/v1/webhooks").json()["data"] == []
    r = api(srv, admin, "POST", "/v1/webhooks", json={"url": "https://hooks.example.com/h"})
    assert r.status_code == 201


def doc_snippet(lang):
    """The verification example for `lang` in docs/API.md, as written there."""
    import re
    from conftest import ROOT
    text = open(os.path.join(ROOT, "docs", "API.md")).read()
    m = re.search(r"Verify in %s:\n\n```\w+\n(.*?)```" % lang, text, re.S)
    assert m, f"no {lang} example in docs/API.md"
    return m.group(1)


def test_documented_verifiers_accept_real_signatures(make_server, tmp_path):
    rec = Receiver()
    srv = make_server(extra=FAST)
    admin = srv.create_key("--scope", "admin", "--scope", "send")
    try:
        r = api(srv, admin, "POST", "/v1/webhooks", json={"url": rec.url})
        rec.secret = r.json()["secret"]
        send(srv, admin, 1)
        assert wait_for(lambda: rec.raw)
        ts, body, sig = rec.raw[0]
        scope = {}
        exec(doc_snippet("Python"), scope)
        assert scope["verify"](rec.secret, ts, body, sig)
        assert not scope["verify"](rec.secret, ts, body + b" ", sig)
        assert not scope["verify"]("whsec_wrong", ts, body, sig)
        (tmp_path / "body.bin").write_bytes(body)
        js = doc_snippet("Node") + f"""
const fs = require("fs");
const body = fs.readFileSync({json.dumps(str(tmp_path / "body.bin"))});
const ok = verify({json.dumps(rec.secret)}, {json.dumps(ts)}, body, {json.dumps(sig)});
const bad = verify({json.dumps(rec.secret)}, {json.dumps(ts)}, Buffer.concat([body, Buffer.from(" ")]), {json.dumps(sig)});
process.stdout.write(JSON.stringify([ok, bad]));
"""
        p = subprocess.run(["node", "-e", js], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == [True, False]
    finally:
        rec.close()
