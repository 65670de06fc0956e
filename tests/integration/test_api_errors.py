"""Every error the API promises, each with its status, JSON code and field,
and proof that a refused request stored nothing."""
import json
import shutil
import socket
import subprocess

import pytest
import requests

from api_support import Api, api, b64  # noqa: F401  (fixture)


def count_messages(a):
    return len(a.get("/v1/messages?limit=1000").json()["data"])


def err(r, status, code, field=None):
    assert r.status_code == status, f"{r.status_code} {r.text}"
    e = r.json()["error"]
    assert e["code"] == code, e
    assert e["message"]
    if field is not None:
        assert e.get("field") == field, e
    return e


def test_authentication_and_scopes(api):
    err(api.post("/v1/messages", {"from": "a@example.com"}, key=""), 401, "unauthorized", "Authorization")
    r = api.post("/v1/messages", {}, key="ph_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
    err(r, 401, "unauthorized")
    assert "invalid_token" in r.headers["WWW-Authenticate"]
    err(api.post("/v1/messages", {}, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, "unauthorized")
    # a read-only key cannot send, a send-only key cannot read or administer
    reader = api.srv.create_key("--scope", "read")
    sender = api.srv.create_key("--scope", "send")
    msg = {"from": "a@example.com", "to": "b@example.com", "text": "x"}
    err(api.post("/v1/messages", msg, key=reader), 403, "insufficient_scope")
    err(api.get("/v1/events", key=sender), 403, "insufficient_scope")
    err(api.post("/v1/suppressions", {"email": "x@example.com"}, key=reader), 403, "insufficient_scope")
    assert api.get("/v1/events", key=reader).status_code == 200
    # a revoked key stops working at once
    kid = sender.split("_")[1]
    api.srv.cli("keys", "revoke", kid)
    err(api.post("/v1/messages", {"from": "a@example.com", "to": "b@example.com", "text": "x"}, key=sender),
        401, "unauthorized")


def test_ip_allowlist(api):
    elsewhere = api.srv.create_key("--allow-ip", "192.0.2.0/24")
    err(api.get("/v1/messages", key=elsewhere, check=False), 403, "ip_not_allowed")
    here = api.srv.create_key("--scope", "read", "--allow-ip", "127.0.0.0/8")
    assert api.get("/v1/messages", key=here).status_code == 200


def test_sender_domain_is_enforced(api):
    k = api.srv.create_key("--sender-domain", "example.com")
    body = {"from": "app@example.com", "to": "x@example.org", "text": "x"}
    assert api.post("/v1/messages", body, key=k).status_code == 202
    body["from"] = "ceo@other.example"
    err(api.post("/v1/messages", body, key=k), 403, "forbidden", "from")


def test_unknown_route_and_message(api):
    r = requests.get(api.url + "/v2/nothing", headers={"Authorization": f"Bearer {api.key}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    err(api.get("/v1/messages/01aaaaaaaaaaaaaaaaaaaaaaaa"), 404, "not_found", "id")
    err(api.delete("/v1/messages/01aaaaaaaaaaaaaaaaaaaaaaaa"), 404, "not_found", "id")
    r = requests.put(api.url + "/v1/messages", headers={"Authorization": f"Bearer {api.key}"})
    assert r.status_code in (405, 501)
    r = requests.delete(api.url + "/v1/events", headers={"Authorization": f"Bearer {api.key}"})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_content_type_required(api):
    r = api.post("/v1/messages", data=b'{"from":"a@example.com"}', headers={"Content-Type": "text/plain"})
    err(r, 415, "unsupported_media_type", "Content-Type")
    r = api.post("/v1/messages", data=b'{"from":"a@example.com"}', headers={})
    err(r, 415, "unsupported_media_type")
    r = api.post("/v1/suppressions", data=b"{}", headers={"Content-Type": "application/x-www-form-urlencoded"})
    err(r, 415, "unsupported_media_type")


def test_malformed_json_invalid_utf8_and_depth(api):
    before = count_messages(api)
    h = {"Content-Type": "application/json"}
    err(api.post("/v1/messages", data=b'{"from": "a@example.com",', headers=h), 400, "invalid_json")
    err(api.post("/v1/messages", data=b'[1,2]', headers=h), 400, "invalid_json")
    err(api.post("/v1/messages", data=b'{"a":1,"a":2}', headers=h), 400, "invalid_json")
    # invalid UTF-8: a lone continuation byte, an overlong encoding, a surrogate
    for bad in (b'{"subject":"\x80"}', b'{"subject":"\xc0\xaf"}', b'{"subject":"\xed\xa0\x80"}'):
        err(api.post("/v1/messages", data=bad, headers=h), 400, "invalid_utf8")
    # nesting: the default [api] max_json_depth is 16
    deep = b'{"metadata":' + b'[' * 40 + b']' * 40 + b'}'
    e = err(api.post("/v1/messages", data=deep, headers=h), 400, "json_too_deep")
    assert "16" in e["message"]
    # \u0000 inside a JSON string is refused by the parser
    err(api.post("/v1/messages", data=b'{"subject":"a\\u0000b"}', headers=h), 400, "invalid_json")
    assert count_messages(api) == before


def test_depth_limit_is_configurable(make_server):
    srv = make_server({"api": {"max_json_depth": "3"}})
    a = Api(srv, srv.create_key())
    ok = {"from": "app@example.com", "to": [{"email": "x@example.org"}], "text": "x"}  # depth 3
    assert a.post("/v1/messages", ok).status_code == 202
    r = a.post("/v1/messages", dict(ok, metadata={"a": "b"}, attachments=[{"x": [1]}]))
    err(r, 400, "json_too_deep")


def test_body_too_large(make_server):
    srv = make_server({"api": {"max_body_size": "2K"}})
    a = Api(srv, srv.create_key())
    assert a.send(text="x" * 1500).status_code == 202
    r = a.post("/v1/messages", {"from": "app@example.com", "to": "u@example.org", "text": "x" * 3000}, check=False)
    # evhttp refuses the body before it is read (so no route runs): status 413, connection closed
    assert r.status_code == 413
    # curl sends the body with Expect: 100-continue: refused before it is sent
    big = json.dumps({"from": "app@example.com", "to": "u@example.org", "text": "y" * 5000})
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", a.url + "/v1/messages",
                        "-H", f"Authorization: Bearer {a.key}", "-H", "Content-Type: application/json",
                        "-H", "Expect: 100-continue", "--data-binary", big], capture_output=True, text=True, timeout=30)
    assert p.stdout == "413"
    assert len(a.get("/v1/messages?limit=1000", key=srv.create_key("--scope", "read")).json()["data"]) == 1


def test_invalid_fields_name_the_field(api):
    before = count_messages(api)
    cases = [
        ({"to": ["ok@example.org", "also@example.org", "bad address@example.org"]}, "to[2]"),
        ({"to": "user@-bad-.example"}, "to"),
        ({"cc": [{"name": "No Email"}]}, "cc[0].email"),
        ({"from": "not-an-address"}, "from"),
        ({"to": []}, "to"),
        ({"text": None, "html": None}, "text"),
        ({"subject": 42}, "subject"),
        ({"tags": "one"}, "tags"),
        ({"tags": [""]}, "tags[0]"),
        ({"metadata": {"n": 1}}, "metadata.n"),
        ({"send_at": "tomorrow"}, "send_at"),
        ({"headers": {"Bad Name": "x"}}, "headers.Bad Name"),
        ({"headers": {"From": "evil@example.com"}}, "headers.From"),
        ({"headers": {"X-Num": 5}}, "headers.X-Num"),
        ({"bogus": 1}, "bogus"),
        ({"attachments": [{"filename": "a.txt"}]}, "attachments[0].content"),
        ({"attachments": [{"filename": "a.txt", "content": "!!!not base64"}]}, "attachments[0].content"),
        ({"attachments": [{"filename": "a.txt", "content": "aGk=", "content_type": "nonsense"}]},
         "attachments[0].content_type"),
    ]
    for fields, field in cases:
        err(api.send(**fields), 422, "invalid_field", field)
    assert count_messages(api) == before


def test_idn_addresses_become_a_labels(api):
    r = api.send(to="user@bücher.example")
    assert r.status_code == 202, r.text
    assert r.json()["recipients"][0]["email"] == "user@xn--bcher-kva.example"


def test_header_injection_is_refused_everywhere(api):
    before = count_messages(api)
    attempts = [
        ({"subject": "hi\r\nBcc: victim@example.org"}, "subject"),
        ({"subject": "hi\nX-Evil: 1"}, "subject"),
        ({"to": [{"email": "u@example.org", "name": "Eve\r\nBcc: victim@example.org"}]}, "to[0].name"),
        ({"to": "u@example.org\r\nBcc: victim@example.org"}, "to"),
        ({"from": {"email": "app@example.com", "name": "A\rB"}}, "from.name"),
        ({"reply_to": "x@example.org\nBcc: v@example.org"}, "reply_to"),
        ({"headers": {"X-Tag": "a\r\nBcc: victim@example.org"}}, "headers.X-Tag"),
        ({"attachments": [{"filename": "a\r\n.txt", "content": "aGk="}]}, "attachments[0].filename"),
        ({"attachments": [{"filename": "a.png", "content": "aGk=", "content_id": "x\r\ny"}]},
         "attachments[0].content_id"),
    ]
    for fields, field in attempts:
        e = err(api.send(**fields), 422, "invalid_field", field)
        assert "injection" in e["message"] or "printable" in e["message"] or "name" in e["message"]
    assert count_messages(api) == before


ELF = open(shutil.which("true"), "rb").read()


def test_blocked_attachments(api):
    before = count_messages(api)
    # by extension
    e = err(api.send(attachments=[{"filename": "setup.EXE", "content": b64(b"MZ whatever")}]),
            422, "invalid_field", "attachments[0].filename")
    assert "setup.EXE" in e["message"]
    # by content, with harmless names
    e = err(api.send(attachments=[{"filename": "notes.txt", "content": b64(b"hello")},
                                  {"filename": "report.pdf", "content_type": "application/pdf", "content": b64(ELF)}]),
            422, "invalid_field", "attachments[1].content")
    assert "report.pdf" in e["message"]
    e = err(api.send(attachments=[{"filename": "invoice.pdf", "content": b64(b"#!/bin/sh\nrm -rf ~\n")}]),
            422, "invalid_field", "attachments[0].content")
    assert "shellscript" in e["message"]
    assert count_messages(api) == before


def test_attachment_and_recipient_limits(make_server):
    srv = make_server({"api": {"max_attachments": "2", "max_attachment_size": "1K", "max_recipients": "3"}})
    a = Api(srv, srv.create_key())
    small = {"filename": "a.txt", "content": b64(b"x" * 1024)}
    assert a.send(attachments=[small, small]).status_code == 202
    err(a.send(attachments=[small] * 3), 413, "too_large", "attachments")
    e = err(a.send(attachments=[{"filename": "b.txt", "content": b64(b"x" * 1025)}]), 413, "too_large",
            "attachments[0].content")
    assert "max_attachment_size" in e["message"]
    assert a.send(to=["1@example.org", "2@example.org"], cc="3@example.org").status_code == 202
    err(a.send(to=["1@example.org", "2@example.org"], cc="3@example.org", bcc="4@example.org"),
        413, "too_large", "bcc")


def test_storage_full_is_507(make_server):
    srv = make_server({"spool": {"max_size": "400K"}})
    a = Api(srv, srv.create_key())
    blob = b64(bytes(range(256)) * 400)  # ~100 KB, incompressible enough
    codes = []
    for i in range(12):
        r = a.send(attachments=[{"filename": f"f{i}.bin", "content": blob}])
        codes.append(r.status_code)
        if r.status_code == 507:
            assert r.json()["error"]["code"] == "storage_full"
            break
    assert codes[0] == 202 and codes[-1] == 507, codes
    # reads keep working when full
    assert a.get("/healthz").status_code == 200


def test_locked_spool_is_503(make_server):
    import sqlite3
    srv = make_server({"spool": {"busy_timeout": "200ms"}})
    a = Api(srv, srv.create_key())
    db = sqlite3.connect(f"{srv.spool_dir}/spool.db", timeout=1, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        r = a.get("/readyz")
        err(r, 503, "not_ready")
        r = a.send()
        assert r.status_code == 503, r.text
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert a.get("/readyz").status_code == 200
    assert a.send().status_code == 202
