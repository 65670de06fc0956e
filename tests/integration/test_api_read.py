"""Status, lists with filters and cursors, cancel, the event stream,
suppressions and the health routes."""
import datetime
import subprocess
import time

import requests

from api_support import Api, api, check_response  # noqa: F401  (fixture)


def send(a, **kw):
    body = {"from": "app@example.com", "to": "user@example.org", "subject": "s", "text": "t"}
    body.update(kw)
    r = a.post("/v1/messages", body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_health_routes_need_no_key(api):
    for path in ("/healthz", "/readyz"):
        r = requests.get(api.url + path)
        check_response("GET", path, r)
        assert r.status_code == 200
    assert requests.get(api.url + "/readyz").json()["status"] == "ready"


def test_get_message_with_timeline(api):
    mid = send(api, to=["a@example.org", "b@example.org"], tags=["receipt"], metadata={"order": "42"})
    m = api.get(f"/v1/messages/{mid}").json()
    assert m["id"] == mid and m["from"] == "app@example.com" and m["ingress"] == "api"
    assert [r["email"] for r in m["recipients"]] == ["a@example.org", "b@example.org"]
    assert all(r["status"] == "queued" and r["attempts"] == 0 for r in m["recipients"])
    assert m["tags"] == ["receipt"] and m["metadata"] == {"order": "42"}
    assert m["message_id"].startswith("<") and m["message_id"].endswith(">")
    assert [(e["type"], e["recipient"]) for e in m["events"]] == [
        ("accepted", "a@example.org"), ("accepted", "b@example.org")]


def test_list_filters_and_cursor(api):
    ids = [send(api, to=f"u{i}@example.org", tags=["even" if i % 2 == 0 else "odd"]) for i in range(7)]
    page = api.get("/v1/messages?limit=3").json()
    assert [m["id"] for m in page["data"]] == ids[::-1][:3]
    assert page["has_more"] and page["next_cursor"]
    seen = []
    cursor = None
    for _ in range(10):  # bounded
        q = "/v1/messages?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(q).json()
        seen += [m["id"] for m in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    evens = [m["id"] for m in api.get("/v1/messages?tag=even").json()["data"]]
    assert evens == [ids[6], ids[4], ids[2], ids[0]]
    assert [m["id"] for m in api.get("/v1/messages?recipient=U3@example.org").json()["data"]] == [ids[3]]
    future = (datetime.datetime.utcnow() + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert api.get(f"/v1/messages?since={future}").json()["data"] == []
    assert len(api.get("/v1/messages?since=2000-01-01T00:00:00Z").json()["data"]) == 7
    assert len(api.get("/v1/messages?status=queued").json()["data"]) == 7
    assert api.get("/v1/messages?status=delivered").json()["data"] == []
    for q, field in (("status=nope", "status"), ("limit=0", "limit"), ("limit=100001", "limit"),
                     ("cursor=abc", "cursor"), ("since=yesterday", "since")):
        r = api.get("/v1/messages?" + q)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, q


def test_cancel_recipients_not_yet_delivered(api):
    mid = send(api, to=["a@example.org", "b@example.org"], send_at="2099-01-01T00:00:00Z")
    r = api.delete(f"/v1/messages/{mid}")
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["recipients"]] == ["cancelled", "cancelled"]
    events = api.get(f"/v1/messages/{mid}").json()["events"]
    assert [e["type"] for e in events].count("cancelled") == 2
    # the CLI's view of the spool agrees
    out = api.srv.cli("queue", "show", mid).stdout
    assert "cancelled" in out
    assert [m["id"] for m in api.get("/v1/messages?status=cancelled").json()["data"]] == [mid]
    # cancelling again changes nothing and is not an error
    assert api.delete(f"/v1/messages/{mid}").status_code == 200


def test_event_stream_cursor_type_since_and_metadata(api):
    m1 = send(api, to=["a@example.org", "b@example.org"], tags=["t1"], metadata={"user": "7"})
    first = api.get("/v1/events?limit=1").json()
    assert len(first["data"]) == 1 and first["has_more"]
    ev = first["data"][0]
    assert ev["type"] == "accepted" and ev["message_id"] == m1 and ev["recipient"] == "a@example.org"
    assert ev["tags"] == ["t1"] and ev["metadata"] == {"user": "7"}
    rest = api.get(f"/v1/events?cursor={first['next_cursor']}").json()
    assert [e["recipient"] for e in rest["data"]] == ["b@example.org"]
    # polling with the last cursor returns only newer events
    cursor = rest["next_cursor"]
    assert api.get(f"/v1/events?cursor={cursor}").json()["data"] == []
    api.post("/v1/suppressions", {"email": "gone@example.org", "reason": "complaint"})
    m2 = send(api, to=["gone@example.org", "c@example.org"])
    new = api.get(f"/v1/events?cursor={cursor}").json()["data"]
    assert ("suppressed", "gone@example.org") in [(e["type"], e["recipient"]) for e in new]
    sup = api.get("/v1/events?type=suppressed").json()["data"]
    assert [(e["message_id"], e["recipient"]) for e in sup] == [(m2, "gone@example.org")]
    future = (datetime.datetime.utcnow() + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert api.get(f"/v1/events?since={future}").json()["data"] == []
    assert api.get("/v1/events?type=Bad-Type").status_code == 400
    assert api.get("/v1/events?cursor=-5").status_code == 400


def test_suppressions_crud_and_effect_on_sending(api):
    r = api.post("/v1/suppressions", {"email": "Bounced@Example.ORG", "reason": "hard_bounce"})
    assert r.status_code == 201 and r.json()["email"] == "Bounced@example.org"
    api.post("/v1/suppressions", {"email": "unsub@example.org", "reason": "unsubscribe"})
    api.post("/v1/suppressions", {"email": "manual@example.org"})
    listed = api.get("/v1/suppressions").json()["data"]
    assert {(s["email"], s["reason"]) for s in listed} == {
        ("bounced@example.org", "hard_bounce"), ("unsub@example.org", "unsubscribe"),
        ("manual@example.org", "manual")}
    page = api.get("/v1/suppressions?limit=2").json()
    assert len(page["data"]) == 2 and page["next_cursor"]
    rest = api.get(f"/v1/suppressions?limit=2&cursor={page['next_cursor']}").json()
    assert len(rest["data"]) == 1 and not rest["has_more"]
    one = api.get("/v1/suppressions/bounced@example.org")
    assert one.status_code == 200 and one.json()["reason"] == "hard_bounce"
    r = api.post("/v1/suppressions", {"email": "x@example.org", "reason": "because"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "reason"
    r = api.post("/v1/suppressions", {"email": "not an address"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "email"
    # sending to a suppressed address: that recipient is 'suppressed', the other queued
    r = api.post("/v1/messages", {"from": "app@example.com", "to": ["bounced@example.org", "fine@example.org"],
                                  "text": "x"})
    assert r.status_code == 202
    assert [(x["email"], x["status"]) for x in r.json()["recipients"]] == [
        ("bounced@example.org", "suppressed"), ("fine@example.org", "queued")]
    m = api.get(f"/v1/messages/{r.json()['id']}").json()
    assert [x["status"] for x in m["recipients"]] == ["suppressed", "queued"]
    # delete, then 404
    assert api.delete("/v1/suppressions/bounced@example.org").json() == {"email": "bounced@example.org",
                                                                         "deleted": True}
    assert api.get("/v1/suppressions/bounced@example.org").status_code == 404
    assert api.delete("/v1/suppressions/bounced@example.org").status_code == 404
    r = api.post("/v1/messages", {"from": "app@example.com", "to": "bounced@example.org", "text": "x"})
    assert r.json()["recipients"][0]["status"] == "queued"


def test_suppressed_recipient_is_never_contacted(make_server):
    """With delivery running against a local sink, the suppressed address gets nothing."""
    import asyncio
    import threading
    from aiosmtpd.controller import Controller

    got = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            got.append(list(envelope.rcpt_tos))
            return "250 OK"

    from conftest import free_port
    port = free_port()
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        srv = make_server({"delivery": {"paused": "no", "route": "relay", "relay_host": "127.0.0.1",
                                        "relay_port": str(port), "relay_tls": "none",
                                        "tls_policy_relay": "none"}})
        a = Api(srv, srv.create_key("--scope", "send", "--scope", "read", "--scope", "admin"))
        a.post("/v1/suppressions", {"email": "never@example.org", "reason": "complaint"})
        mid = send(a, to=["never@example.org", "ok@example.org"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [r["status"] for r in a.get(f"/v1/messages/{mid}").json()["recipients"]]
            if states[1] in ("delivered", "bounced", "deferred"):
                break
            time.sleep(0.1)
        assert states == ["suppressed", "delivered"], states
        assert got and all("never@example.org" not in rcpts for rcpts in got)
    finally:
        ctl.stop()


def test_https_listener(make_server):
    """[api] tls = yes: the API speaks HTTPS with the server certificate
    (self-signed here, so the client pins it); plain HTTP gets nothing."""
    import os
    srv = make_server({"api": {"tls": "yes"}})
    cert = os.path.join(srv.spool_dir, "tls-cert.pem")
    key = srv.create_key()
    url = f"https://127.0.0.1:{srv.api_port}"
    r = requests.post(url + "/v1/messages", json={"from": "app@example.com", "to": "u@example.org", "text": "tls"},
                      headers={"Authorization": f"Bearer {key}"}, verify=cert, timeout=30)
    assert r.status_code == 202, r.text
    from api_support import raw_of
    assert b"with HTTPS id" in raw_of(srv, r.json()["id"])
    try:
        requests.get(f"http://127.0.0.1:{srv.api_port}/healthz", timeout=5)
        plain_ok = True
    except requests.exceptions.RequestException:
        plain_ok = False
    assert not plain_ok


def test_metrics_route_counts_api_refusals(api):
    r = requests.get(api.url + "/metrics")
    assert r.status_code == 401  # scope read needed
    api.post("/v1/messages", {"from": "a@example.com"}, key="ph_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
    api.send(to="bad@@example.org")
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.text
    assert 'posthaste_auth_failures_total{ingress="api"} 2' in text  # no key, then a bad key
    assert 'posthaste_rejected_total{reason="invalid_field"} 1' in text
