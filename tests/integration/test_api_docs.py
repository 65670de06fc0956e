"""Every curl example in docs/API.md, run as written against a real
server (only $API, $PH_KEY and the example message id are supplied), and
each response checked against docs/openapi.yaml. Keeps the docs honest
and exercises every route with curl."""
import json
import os
import re
import subprocess

from api_support import api, check_response  # noqa: F401  (fixture)
from conftest import ROOT

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
EXAMPLE_ID = "01m84rmv2x44wp7gmejfb3q3pw"


class CurlResponse:
    def __init__(self, status, headers, body):
        self.status_code = status
        self.headers = headers
        self.text = body

    def json(self):
        return json.loads(self.text)


def curl_commands():
    doc = open(os.path.join(ROOT, "docs", "API.md"), encoding="utf-8").read()
    cmds = []
    for block in re.findall(r"```sh\n(.*?)```", doc, re.S):
        joined = re.sub(r"\\\n", " ", block)
        # a -d '…' argument may span lines: join lines until quotes balance
        current = ""
        for line in joined.splitlines():
            current = f"{current}\n{line}" if current else line
            if current.count("'") % 2 == 0:
                if current.lstrip().startswith("curl "):
                    cmds.append(re.sub(r"\s{2,}# .*$", "", current.strip()))  # trailing comment
                current = ""
    return cmds


def run_curl(cmd, env, cwd):
    hdr = os.path.join(cwd, "headers.txt")
    body = os.path.join(cwd, "body.txt")
    full = f"{cmd} -D {hdr} -o {body} -w '%{{http_code}} %{{method}} %{{url_effective}}'"
    p = subprocess.run(["sh", "-c", full], capture_output=True, text=True, env=env, cwd=cwd, timeout=30)
    assert p.returncode == 0, f"{cmd}\n{p.stderr}"
    status, method, url = p.stdout.split(" ", 2)
    headers = {}
    for line in open(hdr, encoding="latin-1").read().splitlines()[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip()] = v.strip()
    return method, url, CurlResponse(int(status), headers, open(body, encoding="utf-8", errors="replace").read())


def test_every_curl_example_in_api_md(api, tmp_path):
    (tmp_path / "receipt.pdf").write_bytes(PDF)
    (tmp_path / "message.eml").write_bytes(b"From: shop@example.com\nTo: ann@example.org\nSubject: raw\n\nhello\n")
    env = {**os.environ, "API": api.url, "PH_KEY": api.key}
    first = api.send()
    msg_id = first.json()["id"]
    cmds = curl_commands()
    assert len(cmds) >= 15, cmds
    routes = set()
    for cmd in cmds:
        cmd = cmd.replace(EXAMPLE_ID, msg_id).replace("http://127.0.0.1:8025", api.url)
        method, url, resp = run_curl(cmd, env, str(tmp_path))
        path = url.split(api.url, 1)[1].split("?")[0]
        check_response(method, path, resp)
        assert resp.status_code < 500, (cmd, resp.status_code, resp.text)
        routes.add((method, re.sub(r"/v1/(messages|suppressions)/[^/]+$",
                                   lambda m: f"/v1/{m.group(1)}/{{}}", path)
                    if not path.endswith(("/batch", "/raw")) else path))
    assert routes >= {
        ("GET", "/healthz"), ("GET", "/readyz"), ("POST", "/v1/messages"), ("GET", "/v1/messages"),
        ("POST", "/v1/messages/batch"), ("POST", "/v1/messages/raw"), ("GET", "/v1/messages/{}"),
        ("DELETE", "/v1/messages/{}"), ("GET", "/v1/events"), ("GET", "/v1/suppressions"),
        ("POST", "/v1/suppressions"), ("GET", "/v1/suppressions/{}"), ("DELETE", "/v1/suppressions/{}"),
    }, routes
