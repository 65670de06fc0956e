"""MX routing against real DNS (dnsmasq) and a real receiver (aiosmtpd).

dnsmasq serves: an MX with two preferences whose first host refuses
connections, a domain with only an A record, a null MX (RFC 7505), and
NXDOMAIN for anything else under .test.
"""
import email
import email.policy

import pytest
from aiosmtpd.controller import Controller

from delivery_receivers import (Dnsmasq, ScriptedSMTP, delivery_sections, events_of, free_port_on,
                                loopback_net, submit, suppressions, wait_for, wait_states, show)


class Sink:
    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 2.0.0 Ok: queued by aiosmtpd"


@pytest.fixture
def net():
    """Loopback addresses, a common port, dnsmasq with the test zone, an
    aiosmtpd receiver on .2 (mx2.two.test and aonly.test) and the sender's
    domain src.test whose MX (.4, scripted) collects non-delivery reports."""
    pre = loopback_net()
    ips = {"dns": pre + "1", "good": pre + "2", "dead": pre + "3", "src": pre + "4"}
    port = free_port_on([ips["good"], ips["dead"], ips["src"]])
    dns = Dnsmasq(ips["dns"], [
        "--mx-host=two.test,mx1.two.test,10", "--mx-host=two.test,mx2.two.test,20",
        f"--host-record=mx1.two.test,{ips['dead']}", f"--host-record=mx2.two.test,{ips['good']}",
        f"--host-record=aonly.test,{ips['good']}",
        "--mx-host=null.test,.,0",
        "--mx-host=deadonly.test,mx.deadonly.test,10", f"--host-record=mx.deadonly.test,{ips['dead']}",
        "--mx-host=src.test,mx.src.test,10", f"--host-record=mx.src.test,{ips['src']}",
        f"--host-record=xn--bcher-kva.test,{ips['src']}",
    ]).start()
    sink = Sink()
    ctl = Controller(sink, hostname=ips["good"], port=port)
    ctl.start()
    ndr = ScriptedSMTP(ips["src"], port).start()
    yield {"dns": dns, "port": port, "sink": sink, "ndr": ndr, "ips": ips}
    ndr.stop()
    ctl.stop()
    dns.stop()


def test_mx_with_two_preferences_falls_to_the_second_host(make_server, net):
    srv = make_server(delivery_sections(net["dns"].server, net["port"]))
    ids = submit(srv, 3, "app@src.test", ["a@two.test", "b@two.test"])
    for i in ids:
        msg = wait_states(srv, i, {"a@two.test": "delivered", "b@two.test": "delivered"})
        ev = events_of(msg, "delivered", "a@two.test")[0]["data"]
        # The event names the host that took it and carries its full reply and the attempt.
        assert "mx2.two.test" in ev["host"] and net["ips"]["good"] in ev["host"]
        assert "queued by aiosmtpd" in ev["reply"] and ev["attempt"] == 1 and ev["code"] == 250
    # Both recipients of a message travelled in one transaction.
    assert len(net["sink"].envelopes) == 3
    assert all(sorted(e.rcpt_tos) == ["a@two.test", "b@two.test"] for e in net["sink"].envelopes)
    assert all(e.mail_from == "app@src.test" for e in net["sink"].envelopes)
    assert srv.stop() == 0


def test_domain_with_only_an_a_record(make_server, net):
    srv = make_server(delivery_sections(net["dns"].server, net["port"]))
    [i] = submit(srv, 1, "app@src.test", ["x@aonly.test"])
    wait_states(srv, i, {"x@aonly.test": "delivered"})
    body = net["sink"].envelopes[0].content
    # Dot-stuffing round-trips: lines starting with "." arrive intact.
    assert b"\r\n.leading dot line 0\r\n..two dots 0\r\n" in body


def test_null_mx_bounces_at_once_and_notifies_the_sender(make_server, net):
    srv = make_server(delivery_sections(net["dns"].server, net["port"]))
    [i] = submit(srv, 1, "app@src.test", ["x@null.test"])
    msg = wait_states(srv, i, {"x@null.test": "bounced"})
    ev = events_of(msg, "bounced")[0]["data"]
    assert ev["status"] == "5.1.10" and "null MX" in ev["reply"] and ev["attempt"] == 1
    assert ev["bounce"] == "hard"
    # The non-delivery report reaches the envelope sender with a null reverse-path.
    wait_for(lambda: net["ndr"].messages, 10, "the NDR")
    ndr = net["ndr"].messages[0]
    assert ndr.mail_from == "" and ndr.rcpts == ["app@src.test"]
    m = email.message_from_bytes(ndr.data, policy=email.policy.default)
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    parts = list(m.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status",
                                                     "text/rfc822-headers"]
    dsn = parts[1].as_string()
    assert "Final-Recipient: rfc822; x@null.test" in dsn and "Status: 5.1.10" in dsn
    assert "Subject: test 0" in parts[2].get_content()
    # Hard bounce: the address is now suppressed.
    assert suppressions(srv) == {"x@null.test": "hard_bounce"}
    assert srv.stop() == 0


def test_nxdomain_bounces_and_api_mail_gets_no_report(make_server, net):
    srv = make_server(delivery_sections(net["dns"].server, net["port"]))
    [i] = submit(srv, 1, "app@src.test", ["x@nowhere.test"], ingress="api")
    msg = wait_states(srv, i, {"x@nowhere.test": "bounced"})
    ev = events_of(msg, "bounced")[0]["data"]
    assert ev["status"] == "5.1.2" and "does not exist" in ev["reply"]
    # notify_sender_api defaults to no: the API client learns from events instead.
    srv.wait_log("bounced")
    assert not net["ndr"].messages
    assert not any(line.get("event") == "ndr_queued" for line in srv.logs())


def test_unreachable_mx_defers_with_backoff(make_server, net):
    """deadonly.test's only MX refuses connections: the message is deferred
    (never bounced), retried on the schedule, with the reason recorded."""
    srv = make_server(delivery_sections(net["dns"].server, net["port"], retry_schedule="200ms,400ms"))
    [i] = submit(srv, 1, "app@src.test", ["a@deadonly.test"])

    def two_attempts():
        m = show(srv, i)
        return m if len(events_of(m, "deferred")) >= 2 else None
    msg = wait_for(two_attempts, 15, "two deferrals")
    evs = events_of(msg, "deferred")
    assert [e["data"]["attempt"] for e in evs[:2]] == [1, 2]
    assert "refused" in evs[0]["data"]["reply"].lower()
    assert "next_attempt" in evs[0]["data"]
    r = msg["recipients"][0]
    assert r["state"] in ("deferred", "queued") and r["attempts"] >= 2
    # A refused connection halves the destination's concurrency for a while.
    assert srv.wait_log("concurrency_reduced")["destination"] == "mx:deadonly.test"


def test_internationalised_domain_is_looked_up_as_an_a_label(make_server, net):
    """bücher.test exists in DNS only as xn--bcher-kva.test (IDNA 2008)."""
    srv = make_server(delivery_sections(net["dns"].server, net["port"]))
    [i] = submit(srv, 1, "app@src.test", ["user@bücher.test"])
    wait_states(srv, i, {"user@bücher.test": "delivered"})
    m = net["ndr"].messages[0]
    assert m.rcpts == ["user@bücher.test"] and "SMTPUTF8" in m.params


def test_dns_failure_defers(make_server, net):
    """No answer from the resolver is a temporary failure, never a bounce."""
    dead_dns = net["ips"]["dead"] + ":" + str(free_port_on([net["ips"]["dead"]]))
    srv = make_server(delivery_sections(dead_dns, net["port"], dns_timeout="400ms", retry_schedule="1h"))
    [i] = submit(srv, 1, "app@src.test", ["a@two.test"])
    msg = wait_states(srv, i, {"a@two.test": "deferred"})
    ev = events_of(msg, "deferred")[0]["data"]
    assert "MX lookup for two.test failed" in ev["reply"] and ev["code"] == 0
