"""DKIM end to end: mail submitted over SMTP (smtplib, STARTTLS + AUTH) and
over the HTTP API is signed once in the submit pipeline, delivered through
MX routing (dnsmasq) to a real aiosmtpd receiver, and the bytes that
receiver got verify with dkimpy against the record `posthaste dkim keygen`
printed. The spooled bytes are the delivered bytes.
"""
import email.message
import json
import re
import smtplib

import dkim
import pytest
import requests
from aiosmtpd.controller import Controller

from conftest import SLOW
from delivery_receivers import (Dnsmasq, delivery_sections, free_port_on, loopback_net, show,
                                wait_states)
from smtp_helpers import tls_context


class Sink:
    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 2.0.0 Ok: queued by aiosmtpd"


@pytest.fixture
def net():
    pre = loopback_net()
    ips = {"dns": pre + "1", "mx": pre + "2"}
    port = free_port_on([ips["mx"]])
    dns = Dnsmasq(ips["dns"], ["--mx-host=rcpt.test,mx.rcpt.test,10",
                               f"--host-record=mx.rcpt.test,{ips['mx']}"]).start()
    sink = Sink()
    ctl = Controller(sink, hostname=ips["mx"], port=port)
    ctl.start()
    yield {"dns": dns, "port": port, "sink": sink}
    ctl.stop()
    dns.stop()


def zone_value(line):
    return "".join(re.findall(r'"([^"]*)"', line))


def start_signing_server(make_server, net, algs, **sender):
    srv = make_server(delivery_sections(net["dns"].server, net["port"]), start=False)
    records, section = {}, {}
    for alg in algs:
        sel = "r1" if alg == "rsa" else "e1"
        out = srv.cli("dkim", "keygen", "--domain", "src.test", "--selector", sel, "--alg", alg)
        records[f"{sel}._domainkey.src.test."] = zone_value(out.stdout).encode()
        prefix = "dkim" if alg == "rsa" else "dkim_ed25519"
        section[f"{prefix}_selector"] = sel
        section[f"{prefix}_key_file"] = f"{srv.spool_dir}/dkim/{sel}._domainkey.src.test.pem"
    section.update(sender)
    srv.sections["sender src.test"] = section
    srv.write_config()
    srv.start()
    ready = srv.wait_log("dkim_ready")
    assert ready["keys"] == len(algs) and ready["sign_threads"] == 2
    srv.key = srv.create_key()
    srv.records = records
    return srv


def verify(srv, raw):
    def dns(name, timeout=5):
        return srv.records.get(name.decode())
    d = dkim.DKIM(raw)
    n = len(re.findall(rb"(?im)^DKIM-Signature:", raw))
    out = []
    for i in range(n):
        try:
            out.append(d.verify(idx=i, dnsfunc=dns))
        except dkim.ValidationError:
            out.append(False)
    return out


@pytest.mark.parametrize("algs", [["rsa", "ed25519"], ["ed25519"]])
def test_smtp_submission_signed_and_delivered(make_server, net, algs):
    srv = start_signing_server(make_server, net, algs)
    m = email.message.EmailMessage()
    m["From"] = "App <app@src.test>"
    m["To"] = "user@rcpt.test"
    m["Bcc"] = "secret@rcpt.test"
    m["Subject"] = "Your code is 123456"
    m.set_content("Use 123456 to sign in.\n")
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=10 * SLOW) as c:
        c.starttls(context=tls_context(srv))
        c.login("app", srv.key)
        c.send_message(m)
    [msg_id] = [m["id"] for m in json.loads(srv.cli("queue", "list", "--json").stdout)]
    wait_states(srv, msg_id, {"user@rcpt.test": "delivered", "secret@rcpt.test": "delivered"})
    env = net["sink"].envelopes[0]
    raw = env.content
    assert verify(srv, raw) == [True] * len(algs)
    assert b"secret@rcpt.test" not in raw and not re.search(rb"(?im)^bcc:", raw)
    stored = srv.cli("queue", "show", msg_id, "--raw").stdout.encode()
    assert stored.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
    assert verify(srv, raw.replace(b"Subject: Your code is 123456",
                                   b"Subject: Your code is 654321")) == [False] * len(algs)
    assert verify(srv, raw.replace(b"Use 123456", b"Use 999999")) == [False] * len(algs)
    assert srv.stop() == 0  # clean drain: no signing job left behind


def test_api_submission_signed_and_delivered(make_server, net):
    srv = start_signing_server(make_server, net, ["rsa"],
                               bounce_domain="bounces.src.test")
    r = requests.post(f"{srv.api_url}/v1/messages", timeout=10 * SLOW,
                      headers={"Authorization": f"Bearer {srv.key}"},
                      json={"from": "app@src.test", "to": "user@rcpt.test",
                            "subject": "Welcome", "text": "Hello from the API"})
    assert r.status_code == 202, r.text
    msg_id = r.json()["id"]
    wait_states(srv, msg_id, {"user@rcpt.test": "delivered"})
    env = net["sink"].envelopes[0]
    assert verify(srv, env.content) == [True]
    # VERP-ready return path on the wire; the original sender is kept.
    assert env.mail_from == f"bounces+{msg_id}@bounces.src.test"
    assert show(srv, msg_id)["meta"]["original_sender"] == "app@src.test"
    assert srv.stop() == 0
