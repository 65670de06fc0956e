"""POST /v1/messages, /batch and /raw with real clients (requests, curl,
Node fetch, the posthaste CLI); the stored message is parsed back with
Python's email package."""
import email
import email.policy
import json
import os
import shutil
import subprocess

import pytest

from api_support import api, b64, check_response, raw_of  # noqa: F401  (fixture)
from conftest import BIN

# A 1x1 PNG, so libmagic sees a real image.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def parse(raw):
    assert b"\n" not in raw.replace(b"\r\n", b""), "stored message has a bare LF"
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_send_text_is_spooled_with_headers(api):
    r = api.send(to=["a@example.org", {"email": "b@example.net", "name": "Bee"}],
                 cc="c@example.com", bcc=["hidden@example.com"], reply_to="help@example.com",
                 headers={"X-Campaign": "welcome"}, tags=["welcome"], metadata={"user": "42"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert [x["email"] for x in body["recipients"]] == [
        "a@example.org", "b@example.net", "c@example.com", "hidden@example.com"]
    assert all(x["status"] == "queued" for x in body["recipients"])
    msg = parse(raw_of(api.srv, body["id"]))
    assert msg["From"] == "app@example.com"
    assert msg["To"] == "a@example.org, Bee <b@example.net>"
    assert msg["Cc"] == "c@example.com"
    assert msg["Bcc"] is None and b"hidden@" not in raw_of(api.srv, body["id"])
    assert msg["Reply-To"] == "help@example.com"
    assert msg["X-Campaign"] == "welcome"
    assert msg["Message-ID"] and msg["Date"]
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().strip() == "hello"


def test_chinese_html_text_inline_image_and_attachment(api):
    r = api.send(
        **{"from": {"email": "app@example.com", "name": "张三 Shop"},
           "to": [{"email": "li@example.org", "name": "李四"}],
           "subject": "您的订单已发货 — order 42",
           "text": "你好，李四！\n您的订单已发货。",
           "html": '<p>你好，<b>李四</b>！</p><img src="cid:logo@x">',
           "attachments": [
               {"filename": "logo.png", "content_type": "image/png", "content": b64(PNG),
                "content_id": "logo@x"},
               {"filename": "发票.pdf", "content": b64(PDF)},
           ]})
    assert r.status_code == 202, r.text
    msg = parse(raw_of(api.srv, r.json()["id"]))
    raw = raw_of(api.srv, r.json()["id"])
    # RFC 2047: the header bytes are ASCII, the decoded values are Chinese.
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(b < 0x80 for b in head), "non-ASCII bytes in the header section"
    assert str(msg["Subject"]) == "您的订单已发货 — order 42"
    assert msg["From"].addresses[0].display_name == "张三 Shop"
    assert msg["To"].addresses[0].display_name == "李四"
    # multipart/mixed [ multipart/related [ multipart/alternative [text, html], image ], pdf ]
    assert msg.get_content_type() == "multipart/mixed"
    related, pdf = msg.get_payload()
    assert related.get_content_type() == "multipart/related"
    alt, img = related.get_payload()
    assert alt.get_content_type() == "multipart/alternative"
    text, html = alt.get_payload()
    assert text.get_content_type() == "text/plain" and "您的订单已发货" in text.get_content()
    assert html.get_content_type() == "text/html" and "<b>李四</b>" in html.get_content()
    assert text["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    assert img.get_content_type() == "image/png"
    assert img["Content-ID"] == "<logo@x>"
    assert img.get_content_disposition() == "inline"
    assert img.get_content() == PNG
    assert pdf.get_content_type() == "application/pdf"  # sniffed by libmagic
    assert pdf.get_content_disposition() == "attachment"
    assert pdf.get_filename() == "发票.pdf"
    assert pdf.get_content() == PDF


def test_html_only_gets_a_generated_text_part(api):
    r = api.send(text=None, html="<h1>Welcome</h1><p>Click <a href=\"https://x.example/go\">here</a>"
                                 "&amp; enjoy</p><script>evil()</script>")
    assert r.status_code == 202, r.text
    msg = parse(raw_of(api.srv, r.json()["id"]))
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.get_payload()
    t = text.get_content()
    assert "Welcome" in t and "here (https://x.example/go)" in t and "& enjoy" in t
    assert "evil" not in t and "<" not in t


def test_send_at_schedules_the_recipients(api):
    r = api.send(send_at="2099-01-01T00:00:00Z")
    assert r.status_code == 202, r.text
    m = api.get(f"/v1/messages/{r.json()['id']}").json()
    assert m["recipients"][0]["next_attempt_at"].startswith("2099-01-01T00:00:00")


def test_curl_send(api):
    body = json.dumps({"from": "app@example.com", "to": "curl@example.org", "subject": "curl",
                       "text": "sent by curl"})
    p = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", api.url + "/v1/messages",
                        "-H", f"Authorization: Bearer {api.key}", "-H", "Content-Type: application/json",
                        "-d", body], capture_output=True, text=True, timeout=30)
    out, code = p.stdout.rsplit("\n", 1)
    assert code == "202", p.stdout + p.stderr
    msg_id = json.loads(out)["id"]
    assert b"sent by curl" in raw_of(api.srv, msg_id)


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed (scripts/deps installs nodejs)")
def test_node_fetch_send(api, tmp_path):
    script = tmp_path / "send.mjs"
    script.write_text("""
const res = await fetch(process.env.API + '/v1/messages', {
  method: 'POST',
  headers: {'Authorization': 'Bearer ' + process.env.KEY, 'Content-Type': 'application/json'},
  body: JSON.stringify({from: 'app@example.com', to: [{email: 'node@example.org', name: 'Nöde'}],
                        subject: 'from node', text: 'fetch works'}),
});
console.log(JSON.stringify({status: res.status, body: await res.json()}));
""")
    p = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "API": api.url, "KEY": api.key})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == 202, out
    msg = parse(raw_of(api.srv, out["body"]["id"]))
    assert msg["To"].addresses[0].display_name == "Nöde"


def test_cli_send_with_attachment(api, tmp_path):
    f = tmp_path / "report.pdf"
    f.write_bytes(PDF)
    env = {**os.environ, "PH_KEY": api.key}
    p = subprocess.run([BIN, "send", "--api", api.url, "--key-env", "PH_KEY", "--from", "app@example.com",
                        "--to", "cli@example.org", "--subject", "from the CLI", "--text", "see attached",
                        "--attach", str(f)], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    msg = parse(raw_of(api.srv, p.stdout.strip()))
    att = [part for part in msg.iter_attachments()]
    assert att[0].get_filename() == "report.pdf" and att[0].get_content() == PDF
    # The key never appears on the command line; a bad request exits 1 with the API's message.
    p = subprocess.run([BIN, "send", "--api", api.url, "--key-env", "PH_KEY", "--from", "app@example.com",
                        "--to", "not-an-address", "--text", "x"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1 and "422" in p.stderr and "to[0]" in p.stderr
    p = subprocess.run([BIN, "send", "--key-env", "NO_SUCH_VAR", "--from", "a@example.com", "--to", "b@example.com",
                        "--text", "x"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "NO_SUCH_VAR" in p.stderr


def test_batch_validates_each_item_and_answers_per_item(api):
    good = {"from": "app@example.com", "to": "one@example.org", "subject": "1", "text": "1"}
    r = api.post("/v1/messages/batch", {"messages": [
        good,
        {"from": "app@example.com", "to": ["ok@example.org", "bad@@example.org"], "text": "2"},
        dict(good, to="three@example.org"),
    ]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 2 and body["rejected"] == 1
    res = body["results"]
    assert res[0]["status"] == 202 and res[0]["id"]
    assert res[1]["status"] == 422 and res[1]["error"]["field"] == "messages[1].to[1]"
    assert res[2]["status"] == 202 and res[2]["recipients"][0]["email"] == "three@example.org"
    for item in (res[0], res[2]):
        assert api.get(f"/v1/messages/{item['id']}").status_code == 200
    # nothing valid: 422 with the per-item errors, nothing stored
    before = len(api.get("/v1/messages").json()["data"])
    r = api.post("/v1/messages/batch", {"messages": [{"from": "x", "to": "y@example.org", "text": "t"}]})
    assert r.status_code == 422 and r.json()["results"][0]["error"]["field"] == "messages[0].from"
    assert len(api.get("/v1/messages").json()["data"]) == before


def test_batch_limit(make_server):
    from api_support import Api
    srv = make_server({"api": {"max_batch": "3"}})
    a = Api(srv, srv.create_key())
    m = {"from": "app@example.com", "to": "one@example.org", "text": "1"}
    r = a.post("/v1/messages/batch", {"messages": [m] * 4})
    assert r.status_code == 413 and r.json()["error"]["field"] == "messages"
    assert a.post("/v1/messages/batch", {"messages": [m] * 3}).status_code == 202


def test_raw_message(api):
    raw = (b"From: App <app@example.com>\nTo: raw@example.org\nSubject: raw one\n\nbody line\n")
    r = api.post("/v1/messages/raw?from=app@example.com&to=raw@example.org,second@example.org",
                 data=raw, headers={"Content-Type": "message/rfc822"})
    assert r.status_code == 202, r.text
    assert [x["email"] for x in r.json()["recipients"]] == ["raw@example.org", "second@example.org"]
    stored = raw_of(api.srv, r.json()["id"])
    assert b"Subject: raw one\r\n" in stored and b"body line\r\n" in stored
    # envelope in headers instead of the query
    r = api.post("/v1/messages/raw", data=raw, headers={
        "Content-Type": "message/rfc822", "X-Posthaste-From": "app@example.com",
        "X-Posthaste-To": "hdr@example.org"})
    assert r.status_code == 202 and r.json()["recipients"][0]["email"] == "hdr@example.org"
    # same header checks as SMTP: a bare CR in the header is refused
    r = api.post("/v1/messages/raw?from=app@example.com&to=raw@example.org",
                 data=b"From: app@example.com\r\nSubject: a\rb\r\n\r\nx\r\n",
                 headers={"Content-Type": "message/rfc822"})
    assert r.status_code == 422, r.text
    # no From: header
    r = api.post("/v1/messages/raw?from=app@example.com&to=raw@example.org",
                 data=b"Subject: none\r\n\r\nx\r\n", headers={"Content-Type": "message/rfc822"})
    assert r.status_code == 422 and "From" in r.json()["error"]["message"]
    r = api.post("/v1/messages/raw?from=app@example.com", data=raw,
                 headers={"Content-Type": "message/rfc822"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "to"
    r = api.post("/v1/messages/raw?from=app@example.com&to=raw@example.org", data=raw,
                 headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_readme_quickstart_curl_command(api):
    """The README's first-message command, run as written (only the port differs)."""
    import re
    from conftest import ROOT
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("### HTTP API", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    cmds = [line for line in block.splitlines() if line.startswith("curl ")]
    assert len(cmds) == 1, "the quickstart must be ONE curl command"
    cmd = cmds[0].replace("http://127.0.0.1:8025", api.url)
    p = subprocess.run(["sh", "-c", cmd + " -w '\\n%{http_code}'"], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PH_KEY": api.key})
    out, code = p.stdout.rsplit("\n", 1)
    assert code == "202", p.stdout + p.stderr
    assert json.loads(out)["recipients"][0]["status"] == "queued"


def test_every_202_survives_kill_9(api):
    """A 202 is sent after the commit: kill -9 right after the answers and
    every acknowledged message is in the spool when it is opened again."""
    import concurrent.futures
    import requests

    def post(i):
        return requests.post(api.url + "/v1/messages", timeout=30, headers={"Authorization": f"Bearer {api.key}"},
                             json={"from": "app@example.com", "to": f"u{i}@example.org", "text": str(i)})

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(post, range(40)))
    acked = [r.json()["id"] for r in results if r.status_code == 202]
    assert len(acked) == 40
    api.srv.kill()
    out = json.loads(api.srv.cli("queue", "list", "--limit", "1000", "--json").stdout)
    stored = {m["id"] for m in (out if isinstance(out, list) else out.get("messages", out.get("data", [])))}
    assert set(acked) <= stored


def test_sigterm_finishes_in_flight_requests_and_stops_accepting(make_server):
    """While a submission waits for its commit (the spool is locked by
    another process), SIGTERM closes the listener but the server waits for
    that request: it gets its 202, and the message is in the spool."""
    import re
    import signal
    import sqlite3
    import threading
    import time
    import requests
    from api_support import Api
    srv = make_server({"spool": {"busy_timeout": "10s"}})
    a = Api(srv, srv.create_key())
    reader = srv.create_key("--scope", "read")
    db = sqlite3.connect(f"{srv.spool_dir}/spool.db", timeout=1, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    result = {}

    def post():
        result["r"] = requests.post(a.url + "/v1/messages", timeout=30, headers={"Authorization": f"Bearer {a.key}"},
                                    json={"from": "app@example.com", "to": "late@example.org", "text": "x"})

    def in_flight():
        text = requests.get(a.url + "/metrics", timeout=10, headers={"Authorization": f"Bearer {reader}"}).text
        m = re.search(r"^posthaste_http_requests_in_flight (\S+)$", text, re.M)
        return float(m.group(1)) - 1  # the scrape itself is in flight too

    t = threading.Thread(target=post)
    t.start()
    try:
        # The server must have read the request before SIGTERM; a fixed sleep
        # raced with a slow machine (the request still in the accept backlog).
        deadline = time.monotonic() + 20
        while in_flight() < 1:
            assert time.monotonic() < deadline, "the POST never reached the server"
            time.sleep(0.05)
        assert "r" not in result  # waiting for the commit
        srv.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert srv.proc.poll() is None, "server exited with a request in flight"
        refused = False
        try:
            requests.get(a.url + "/healthz", timeout=2)
        except requests.exceptions.ConnectionError:
            refused = True
        assert refused, "the listener still accepts after SIGTERM"
    finally:
        db.execute("ROLLBACK")
        db.close()
    t.join(30)
    assert result["r"].status_code == 202, result["r"].text
    assert srv.proc.wait(timeout=20) == 0
    msg_id = result["r"].json()["id"]
    assert msg_id in srv.cli("queue", "show", msg_id).stdout


def test_long_lines_and_8bit_text_are_encoded_to_fit_smtp(api):
    r = api.send(text="a" * 3000 + "\n" + "ü" * 10, html="<p>" + "b" * 3000 + "</p>")
    assert r.status_code == 202, r.text
    raw = raw_of(api.srv, r.json()["id"])
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert all(b < 0x80 for b in raw), "8-bit bytes in a message built by the API"
    text, html = parse(raw).get_payload()
    # text is in canonical form (CRLF line breaks) before base64, per RFC 2045
    assert text.get_content().replace("\r\n", "\n") == "a" * 3000 + "\n" + "ü" * 10
    assert html.get_content() == "<p>" + "b" * 3000 + "</p>"
