"""End to end: a message submitted with smtplib (STARTTLS + AUTH) to
Posthaste's submission port is delivered to the recipients' MX (found with
dnsmasq), and the recipient that bounces produces a non-delivery report
that travels back to the sender's own MX."""
import email
import email.message
import email.policy
import smtplib

import pytest

from conftest import SLOW
from delivery_receivers import (Dnsmasq, ScriptedSMTP, delivery_sections, free_port_on, loopback_net,
                                wait_for)
from smtp_helpers import tls_context


@pytest.fixture
def env(make_server):
    pre = loopback_net()
    mx_ip, src_ip = pre + "2", pre + "4"
    port = free_port_on([mx_ip, src_ip])
    dns = Dnsmasq(pre + "1", ["--mx-host=s.test,mx.s.test,10", f"--host-record=mx.s.test,{mx_ip}",
                              "--mx-host=src.test,mx.src.test,10", f"--host-record=mx.src.test,{src_ip}"]).start()
    rx = ScriptedSMTP(mx_ip, port, rcpt=lambda a: "550 5.1.1 no such user" if a.startswith("gone") else None).start()
    src = ScriptedSMTP(src_ip, port).start()
    srv = make_server(delivery_sections(dns.server, port))
    srv.key = srv.create_key("--sender-domain", "src.test")
    yield srv, rx, src
    src.stop()
    rx.stop()
    dns.stop()


def test_smtp_submission_is_delivered_and_bounces_come_back(env):
    srv, rx, src = env
    m = email.message.EmailMessage()
    m["From"] = "App <app@src.test>"
    m["To"] = "a@s.test, gone@s.test"
    m["Subject"] = "end to end"
    m.set_content("Hello over the whole pipeline.\n.\nA line with a lone dot above.\n")
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=10 * SLOW) as c:
        c.starttls(context=tls_context(srv))
        c.login("app", srv.key)
        c.send_message(m)
    wait_for(lambda: rx.messages, 15, "delivery to s.test")
    got = rx.messages[0]
    assert got.mail_from == "app@src.test" and got.rcpts == ["a@s.test"]
    parsed = email.message_from_bytes(got.data, policy=email.policy.default)
    assert parsed["Subject"] == "end to end" and parsed["Received"]
    assert b"\r\n.\r\nA line with a lone dot above.\r\n" in got.data
    # SMTP-submitted mail: the sender gets a report for gone@s.test.
    wait_for(lambda: src.messages, 15, "the NDR at src.test")
    ndr = src.messages[0]
    assert ndr.mail_from == "" and ndr.rcpts == ["app@src.test"]
    report = email.message_from_bytes(ndr.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert "Final-Recipient: rfc822; gone@s.test" in list(report.iter_parts())[1].as_string()
    assert report["From"].addresses[0].addr_spec == "MAILER-DAEMON@posthaste.test"
    assert srv.stop() == 0
