"""Idempotency keys, request signing and per-key rate limits."""
import json
import time

import requests

from api_support import Api, api, restart, sign  # noqa: F401  (fixture)

MSG = {"from": "app@example.com", "to": "user@example.org", "subject": "once", "text": "only once"}


def message_ids(a):
    return [m["id"] for m in a.get("/v1/messages?limit=1000").json()["data"]]


def test_idempotency_repeat_returns_first_answer(api):
    h = {"Idempotency-Key": "order-42-receipt"}
    first = api.post("/v1/messages", MSG, headers=dict(h))
    assert first.status_code == 202, first.text
    again = api.post("/v1/messages", MSG, headers=dict(h))
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert message_ids(api).count(first.json()["id"]) == 1 and len(message_ids(api)) == 1
    # survives a restart: the record is in the spool, not in memory
    restart(api.srv)
    third = api.post("/v1/messages", MSG, headers=dict(h))
    assert third.json() == first.json() and len(message_ids(api)) == 1


def test_idempotency_conflict_on_different_body(api):
    h = {"Idempotency-Key": "k-1"}
    assert api.post("/v1/messages", MSG, headers=dict(h)).status_code == 202
    r = api.post("/v1/messages", dict(MSG, subject="changed"), headers=dict(h))
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"
    assert r.json()["error"]["field"] == "Idempotency-Key"
    assert len(message_ids(api)) == 1
    # keys are per API key: another key may use the same string
    other = api.srv.create_key()
    assert api.post("/v1/messages", dict(MSG, subject="changed"), key=other, headers=dict(h)).status_code == 202
    # a failed request is not remembered: fixing it and retrying with the key works
    h2 = {"Idempotency-Key": "k-2"}
    assert api.post("/v1/messages", dict(MSG, to="bad@@x"), headers=dict(h2)).status_code == 422
    assert api.post("/v1/messages", MSG, headers=dict(h2)).status_code == 202
    r = api.post("/v1/messages", MSG, headers={"Idempotency-Key": "x" * 300})
    assert r.status_code == 400 and r.json()["error"]["field"] == "Idempotency-Key"


def test_idempotency_on_batch_and_raw(api):
    h = {"Idempotency-Key": "batch-1"}
    b1 = api.post("/v1/messages/batch", {"messages": [MSG, MSG]}, headers=dict(h))
    b2 = api.post("/v1/messages/batch", {"messages": [MSG, MSG]}, headers=dict(h))
    assert b1.status_code == b2.status_code == 202 and b1.json() == b2.json()
    raw = b"From: app@example.com\r\nSubject: r\r\n\r\nx\r\n"
    hr = {"Idempotency-Key": "raw-1", "Content-Type": "message/rfc822"}
    r1 = api.post("/v1/messages/raw?from=app@example.com&to=u@example.org", data=raw, headers=dict(hr))
    r2 = api.post("/v1/messages/raw?from=app@example.com&to=u@example.org", data=raw, headers=dict(hr))
    assert r1.json() == r2.json()
    assert len(message_ids(api)) == 3


def signed_post(a, key, body, ts=None, sig=None):
    raw = json.dumps(body).encode()
    ts = int(time.time()) if ts is None else ts
    headers = {"Content-Type": "application/json", "X-Posthaste-Timestamp": str(ts),
               "X-Posthaste-Signature": sig or sign(key, ts, raw)}
    return a.post("/v1/messages", data=raw, key=key, headers=headers)


def test_signing_good_bad_skewed_replayed(make_server):
    srv = make_server({"api": {"signature_skew": "5m"}})
    key = srv.create_key("--require-signing", "--scope", "send", "--scope", "read")
    a = Api(srv, key)
    # unsigned: refused
    r = a.post("/v1/messages", MSG)
    assert r.status_code == 401 and r.json()["error"]["code"] == "signature_required"
    # good
    good = signed_post(a, key, MSG)
    assert good.status_code == 202, good.text
    # bad: wrong secret, tampered body, wrong scheme
    assert signed_post(a, key, MSG, sig=sign(key + "x", int(time.time()), json.dumps(MSG).encode())) \
        .json()["error"]["code"] == "signature_invalid"
    ts = int(time.time())
    raw = json.dumps(MSG).encode()
    r = a.post("/v1/messages", data=raw.replace(b"only once", b"only twice"), headers={
        "Content-Type": "application/json", "X-Posthaste-Timestamp": str(ts),
        "X-Posthaste-Signature": sign(key, ts, raw)})
    assert r.status_code == 401 and r.json()["error"]["code"] == "signature_invalid"
    assert signed_post(a, key, MSG, sig="v2=" + "0" * 64).status_code == 401
    # skewed: 6 minutes in the past and in the future
    for off in (-360, 360):
        r = signed_post(a, key, MSG, ts=int(time.time()) + off)
        assert r.status_code == 401 and r.json()["error"]["code"] == "signature_expired"
    # inside the window it is fine
    assert signed_post(a, key, dict(MSG, subject="4 min old"), ts=int(time.time()) - 240).status_code == 202
    # replayed: the exact same request again
    ts = int(time.time())
    raw = json.dumps(dict(MSG, subject="replay me")).encode()
    hdrs = {"Content-Type": "application/json", "X-Posthaste-Timestamp": str(ts),
            "X-Posthaste-Signature": sign(key, ts, raw)}
    assert a.post("/v1/messages", data=raw, headers=dict(hdrs)).status_code == 202
    r = a.post("/v1/messages", data=raw, headers=dict(hdrs))
    assert r.status_code == 401 and r.json()["error"]["code"] == "signature_replayed"
    # GETs are signed too (empty body)
    ts = int(time.time())
    r = a.get("/v1/messages", headers={"X-Posthaste-Timestamp": str(ts), "X-Posthaste-Signature": sign(key, ts, b"")})
    assert r.status_code == 200 and len(r.json()["data"]) == 3
    assert a.get("/v1/messages").status_code == 401


def test_rate_limit_messages_per_second(make_server):
    # 0.5 message/s: a burst of one, then one every two seconds. Slow enough
    # that a sanitizer build cannot refill the bucket between two requests.
    srv = make_server()
    key = srv.create_key("--rate", "0.5/s")
    a = Api(srv, key)
    assert a.post("/v1/messages", MSG).status_code == 202
    r = a.post("/v1/messages", MSG)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 2
    time.sleep(2.1)
    assert a.post("/v1/messages", MSG).status_code == 202
    # a batch takes one token per message: three need six seconds of budget
    time.sleep(2.1)
    r = a.post("/v1/messages/batch", {"messages": [MSG] * 3})
    assert r.status_code == 429
    assert a.post("/v1/messages", MSG).status_code == 202  # the refused batch took nothing


def test_rate_limit_recipients_per_day(make_server):
    srv = make_server({"api": {"recipients_per_day": "3"}})
    key = srv.create_key("--scope", "send", "--scope", "read")
    a = Api(srv, key)
    assert a.post("/v1/messages", dict(MSG, to=["1@example.org", "2@example.org"])).status_code == 202
    r = a.post("/v1/messages", dict(MSG, to=["3@example.org", "4@example.org"]))
    assert r.status_code == 429 and "recipients_per_day" in r.json()["error"]["message"]
    assert 86000 <= int(r.headers["Retry-After"]) <= 86400
    assert a.post("/v1/messages", dict(MSG, to="3@example.org")).status_code == 202
    assert a.post("/v1/messages", dict(MSG, to="4@example.org")).status_code == 429
    # the budget is per key
    assert a.post("/v1/messages", MSG, key=srv.create_key()).status_code == 202
    # it is counted from the spool, so a restart does not reset it
    restart(srv)
    assert a.post("/v1/messages", dict(MSG, to="5@example.org")).status_code == 429


def test_idempotency_concurrent_repeats_create_one_message(api):
    """Ten simultaneous requests with one key: one message; the others get
    the replayed answer or 409 idempotency_in_progress, never a second message."""
    import concurrent.futures
    h = {"Idempotency-Key": "burst-1", "Authorization": f"Bearer {api.key}"}

    def post(_):
        return requests.post(api.url + "/v1/messages", json=MSG, headers=h, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(post, range(10)))
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {202, 409}, codes
    ids = {r.json()["id"] for r in results if r.status_code == 202}
    assert len(ids) == 1, ids
    for r in results:
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "idempotency_in_progress"
    assert len(message_ids(api)) == 1
