"""Helpers for the HTTP API tests: a client that checks every response
against docs/openapi.yaml (status code listed for the route, required
fields present, types right), and fixtures for a server with keys.

The validator is deliberately small: it understands the subset of
OpenAPI 3 / JSON Schema the document uses ($ref, type, required,
properties, items, enum, nullable, oneOf, allOf, additionalProperties).
"""
import base64
import hashlib
import hmac
import json
import os
import re

import pytest
import requests
import yaml

from conftest import ROOT

SPEC = yaml.safe_load(open(os.path.join(ROOT, "docs", "openapi.yaml")))


def _resolve(node):
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = SPEC
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def validate(value, schema, where="$"):
    """Raise AssertionError naming the path where value breaks schema."""
    schema = _resolve(schema)
    if value is None:
        assert schema.get("nullable"), f"{where}: null where the spec does not allow it"
        return
    if "allOf" in schema:
        for s in schema["allOf"]:
            validate(value, s, where)
        return
    if "oneOf" in schema:
        errors = []
        for s in schema["oneOf"]:
            try:
                validate(value, s, where)
                return
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{where}: matches no oneOf branch: {errors}")
    t = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool,
             "integer": int, "number": (int, float)}
    if t:
        assert isinstance(value, types[t]) and not (t == "integer" and isinstance(value, bool)), \
            f"{where}: expected {t}, got {type(value).__name__} {value!r:.80}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if t == "object":
        for name in schema.get("required", []):
            assert name in value, f"{where}: required field '{name}' missing in {value!r:.200}"
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                validate(v, props[k], f"{where}.{k}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(v, schema["additionalProperties"], f"{where}.{k}")
    if t == "array":
        for i, item in enumerate(value):
            validate(item, schema.get("items", {}), f"{where}[{i}]")


def _template(path):
    """The spec path matching a concrete path (/v1/messages/abc -> /v1/messages/{id})."""
    if path in SPEC["paths"]:
        return path
    for tmpl in SPEC["paths"]:
        rx = "^" + re.sub(r"\{[^}]+\}", "[^/]+", tmpl) + "$"
        if re.match(rx, path) and "{" in tmpl:
            return tmpl
    raise AssertionError(f"no path in openapi.yaml matches {path}")


def check_response(method, path, resp):
    """Status code documented for the route; body valid against its schema."""
    item = SPEC["paths"][_template(path)]
    op = item[method.lower()]
    code = str(resp.status_code)
    assert code in op["responses"], \
        f"{method} {path}: status {code} is not documented in openapi.yaml ({resp.text[:300]})"
    spec_resp = _resolve(op["responses"][code])
    for h, hs in spec_resp.get("headers", {}).items():
        if hs.get("required"):
            assert h in resp.headers, f"{method} {path} {code}: header {h} missing"
    content = spec_resp.get("content", {})
    if "application/json" in content:
        assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
        validate(resp.json(), content["application/json"]["schema"])
    return resp


class Api:
    """requests against one server; every response is checked against the spec."""

    def __init__(self, srv, key):
        self.srv = srv
        self.key = key
        self.url = srv.api_url
        self.http = requests.Session()

    def request(self, method, path, key=None, check=True, **kw):
        headers = kw.pop("headers", {})
        k = self.key if key is None else key
        if k:
            headers.setdefault("Authorization", f"Bearer {k}")
        r = self.http.request(method, self.url + path, headers=headers, timeout=30, **kw)
        if check:
            check_response(method, path.split("?")[0], r)
        return r

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        if body is not None:
            kw["json"] = body
        return self.request("POST", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def send(self, **fields):
        body = {"from": "app@example.com", "to": "user@example.org", "subject": "hello",
                "text": "hello"}
        body.update(fields)
        return self.post("/v1/messages", body)


def sign(key, timestamp, body):
    """The documented signing scheme (docs/API.md), computed independently."""
    signing_key = hmac.new(key.encode(), b"posthaste-signing", hashlib.sha256).digest()
    mac = hmac.new(signing_key, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def b64(data):
    return base64.b64encode(data).decode()


def raw_of(srv, msg_id):
    """The stored RFC 5322 bytes, through the CLI (not the API)."""
    import subprocess
    from conftest import BIN
    p = subprocess.run([BIN, "queue", "show", msg_id, "--raw", "-c", srv.config],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture
def api(make_server):
    """A started server and an Api client holding a send+read+admin key."""
    srv = make_server()
    key = srv.create_key("--scope", "send", "--scope", "read", "--scope", "admin")
    return Api(srv, key)


def restart(srv, timeout=15):
    """Stop and start srv, waiting for the new process's own 'ready' line
    (the log file is appended to, so the old line is still there)."""
    import time
    from conftest import SLOW
    seen = sum(1 for line in srv.logs() if line.get("event") == "ready")
    srv.stop()
    srv.start(wait_ready=False)
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        if sum(1 for line in srv.logs() if line.get("event") == "ready") > seen:
            return srv
        assert srv.proc.poll() is None, "server exited during restart"
        time.sleep(0.02)
    raise AssertionError("server did not become ready after restart")
