"""Every remote answer leads to its documented outcome.

A scripted receiver (delivery_receivers.ScriptedSMTP) is the MX of
s.test (via dnsmasq); the sender's domain src.test has its own scripted MX
that collects non-delivery reports. Retry schedules are a few hundred ms.
"""
import email
import email.policy

import pytest

from delivery_receivers import (Dnsmasq, ScriptedSMTP, delivery_sections, events_of, free_port_on,
                                loopback_net, rcpt_states, show, submit, suppressions, wait_for,
                                wait_states)


@pytest.fixture
def env(make_server):
    pre = loopback_net()
    mx_ip, ndr_ip = pre + "2", pre + "4"
    port = free_port_on([mx_ip, ndr_ip])
    dns = Dnsmasq(pre + "1", ["--mx-host=s.test,mx.s.test,10", f"--host-record=mx.s.test,{mx_ip}",
                              "--mx-host=src.test,mx.src.test,10", f"--host-record=mx.src.test,{ndr_ip}"]).start()
    ndr = ScriptedSMTP(ndr_ip, port).start()
    started = []

    class Env:
        def receiver(self, **kw):
            r = ScriptedSMTP(mx_ip, port, **kw).start()
            started.append(r)
            return r

        def server(self, **delivery):
            return make_server(delivery_sections(dns.server, port, **delivery))

    e = Env()
    e.ndr = ndr
    yield e
    for r in started:
        r.stop()
    ndr.stop()
    dns.stop()


def test_per_recipient_replies(env):
    """One transaction, four recipients, four different answers."""
    answers = {"ok@s.test": None, "gone@s.test": "550 5.1.1 <gone@s.test>: user unknown",
               "busy@s.test": "452 4.2.2 mailbox busy, try later",
               "full@s.test": "552 5.2.2 mailbox full"}
    busy_calls = []

    def rcpt(addr):
        if addr == "busy@s.test":
            busy_calls.append(1)
            return answers[addr] if len(busy_calls) == 1 else None  # accepted on the retry
        return answers[addr]

    rx = env.receiver(rcpt=rcpt)
    srv = env.server()
    [i] = submit(srv, 1, "app@src.test", list(answers))
    msg = wait_states(srv, i, {"ok@s.test": "delivered", "gone@s.test": "bounced",
                               "busy@s.test": "delivered", "full@s.test": "bounced"})
    hard = events_of(msg, "bounced", "gone@s.test")[0]["data"]
    soft = events_of(msg, "bounced", "full@s.test")[0]["data"]
    assert hard["bounce"] == "hard" and hard["status"] == "5.1.1" and "user unknown" in hard["reply"]
    assert soft["bounce"] == "soft" and soft["status"] == "5.2.2"
    deferred = events_of(msg, "deferred", "busy@s.test")
    assert len(deferred) == 1 and deferred[0]["data"]["code"] == 452
    assert events_of(msg, "delivered", "busy@s.test")[0]["data"]["attempt"] == 2
    # Only the hard bounce is suppressed.
    assert suppressions(srv) == {"gone@s.test": "hard_bounce"}
    # The first transaction carried all four RCPTs with PIPELINING.
    assert rx.pipelined
    assert rx.messages[0].rcpts == ["ok@s.test"]
    assert rx.delivered_rcpts().count("ok@s.test") == 1  # never re-sent to who already has it
    # One report to the sender lists both failed recipients.
    wait_for(lambda: env.ndr.messages, 10, "NDR")
    m = email.message_from_bytes(env.ndr.messages[0].data, policy=email.policy.default)
    dsn = list(m.iter_parts())[1].as_string()
    assert "gone@s.test" in dsn and "full@s.test" in dsn and "ok@s.test" not in dsn
    assert srv.stop() == 0


@pytest.mark.parametrize("phase,reply,state", [
    ("mail", "451 4.3.0 try again later", "deferred"),
    ("mail", "553 5.7.1 sender rejected", "bounced"),
    ("data", "554 5.7.1 no DATA for you", "bounced"),
    ("dot", "554 5.7.1 message rejected as spam", "bounced"),
    ("dot", "451 4.7.1 greylisted", "deferred"),
    ("greeting", "421 4.7.0 too busy", "deferred"),
    ("rcpt", "421 4.7.0 closing", "deferred"),
])
def test_phase_replies(env, phase, reply, state):
    kw = {"greeting": reply} if phase == "greeting" else {phase: (lambda *_: reply)}
    env.receiver(**kw)
    srv = env.server(retry_schedule="1h")
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"], ingress="api")
    msg = wait_states(srv, i, {"u@s.test": state})
    ev = events_of(msg, state)[0]["data"]
    assert reply in ev["reply"] and ev["attempt"] == 1
    if state == "bounced":
        assert ev["bounce"] == "soft" and not suppressions(srv)
    else:
        # 1h schedule with +-10% jitter.
        r = msg["recipients"][0]
        assert r["attempts"] == 1
    if reply.startswith("421"):
        # The destination's concurrency is halved for concurrency_penalty (10 -> 5).
        assert srv.wait_log("concurrency_reduced")["limit"] == 5


def test_connection_dropped_in_data_is_deferred_then_delivered(env):
    rx = env.receiver(drop_in_data=True)
    srv = env.server()
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"], size=2000)
    wait_for(lambda: events_of(show(srv, i), "deferred"), 10, "deferral")
    ev = events_of(show(srv, i), "deferred")[0]["data"]
    assert ev["code"] == 0 and "DATA" in ev["reply"]
    rx.drop_in_data = False
    msg = wait_states(srv, i, {"u@s.test": "delivered"})
    assert events_of(msg, "delivered")[0]["data"]["attempt"] >= 2
    assert len(rx.messages) == 1


def test_stall_after_data_times_out_and_defers(env):
    env.receiver(stall_after_data=True)
    srv = env.server(timeout_data_term="500ms", retry_schedule="1h")
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"])
    msg = wait_states(srv, i, {"u@s.test": "deferred"})
    assert "timed out" in events_of(msg, "deferred")[0]["data"]["reply"]


def test_expiry_after_max_age_sends_report(env):
    env.receiver(rcpt=lambda a: "451 4.4.1 always later")
    srv = env.server(retry_schedule="200ms", max_age="2s")
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"])
    msg = wait_states(srv, i, {"u@s.test": "expired"}, timeout=15)
    exp = events_of(msg, "expired")[0]["data"]
    assert exp["attempt"] >= 2 and "always later" in exp["reply"]
    wait_for(lambda: env.ndr.messages, 10, "NDR")
    dsn = email.message_from_bytes(env.ndr.messages[0].data, policy=email.policy.default)
    assert "Status: 4.4.7" in list(dsn.iter_parts())[1].as_string()


def test_smtputf8_needed_but_not_offered_bounces_clearly(env):
    rx = env.receiver(smtputf8=False)
    srv = env.server()
    [i] = submit(srv, 1, "app@src.test", ["usér@s.test"], ingress="api")
    msg = wait_states(srv, i, {"usér@s.test": "bounced"})
    ev = events_of(msg, "bounced")[0]["data"]
    assert ev["status"] == "5.6.7" and "SMTPUTF8" in ev["reply"]
    assert not rx.messages and not any(c.startswith("MAIL") for c in rx.commands)


def test_smtputf8_used_when_offered(env):
    rx = env.receiver()
    srv = env.server()
    [i] = submit(srv, 1, "app@src.test", ["usér@s.test"])
    wait_states(srv, i, {"usér@s.test": "delivered"})
    assert "SMTPUTF8" in rx.messages[0].params and "BODY=8BITMIME" in rx.messages[0].params


def test_no_pipelining_one_command_at_a_time(env):
    rx = env.receiver(pipelining=False, rcpt=lambda a: "550 5.1.1 no" if a.startswith("x") else None)
    srv = env.server()
    [i] = submit(srv, 1, "app@src.test", ["x@s.test", "y@s.test"])
    wait_states(srv, i, {"x@s.test": "bounced", "y@s.test": "delivered"})
    assert not rx.pipelined and rx.messages[0].rcpts == ["y@s.test"]


def test_queue_commands_reach_the_running_scheduler(env):
    """retry makes a deferred recipient due now; delete removes one for good."""
    calls = []
    rx = env.receiver(rcpt=lambda a: (calls.append(a), "451 4.3.0 later")[1] if len(calls) < 3 else None)
    srv = env.server(retry_schedule="1h")
    [a, b, c] = submit(srv, 3, "app@src.test", ["u@s.test"])
    for i in (a, b, c):
        wait_states(srv, i, {"u@s.test": "deferred"})
    srv.cli("queue", "delete", b)
    srv.cli("queue", "retry", a)
    wait_states(srv, a, {"u@s.test": "delivered"})
    assert len(rx.messages) == 1 and b"Subject: test 0" in rx.messages[0].data
    assert rcpt_states(srv, c) == {"u@s.test": "deferred"}  # retry touched only a
    srv.cli("queue", "flush")
    wait_states(srv, c, {"u@s.test": "delivered"})
    assert len(rx.messages) == 2 and b"Subject: test 2" in rx.messages[1].data


def test_reply_line_limit(env):
    """A reply line of exactly max_reply_line bytes (CRLF included) is fine;
    one byte more and the session is dropped as hostile: deferred."""
    rx = env.receiver(greeting="220 " + "x" * (2048 - 6))
    srv = env.server()
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"])
    wait_states(srv, i, {"u@s.test": "delivered"})
    rx.stop()
    env.receiver(greeting="220 " + "x" * (2048 - 5))
    srv2 = env.server(retry_schedule="1h")
    [j] = submit(srv2, 1, "app@src.test", ["u@s.test"])
    msg = wait_states(srv2, j, {"u@s.test": "deferred"})
    assert "longer than 2048 bytes" in events_of(msg, "deferred")[0]["data"]["reply"]


def test_recipients_per_transaction_limit(env):
    rx = env.receiver()
    srv = env.server(max_rcpts_per_txn=2)
    rcpts = [f"r{n}@s.test" for n in range(5)]
    [i] = submit(srv, 1, "app@src.test", rcpts)
    wait_states(srv, i, {r: "delivered" for r in rcpts})
    assert sorted(len(m.rcpts) for m in rx.messages) == [1, 2, 2]
    assert sorted(r for m in rx.messages for r in m.rcpts) == rcpts


def test_stored_address_cannot_inject_commands(env):
    """Even a corrupt spool row cannot put CR/LF into the SMTP session: the
    bad recipient is refused locally (5.1.3), the good one is delivered."""
    rx = env.receiver()
    srv = env.server()
    bad = "inj\r\nNOOP@s.test"
    [i] = submit(srv, 1, "app@src.test", [bad, "ok@s.test"], ingress="api")
    msg = wait_states(srv, i, {bad: "bounced", "ok@s.test": "delivered"})
    assert events_of(msg, "bounced")[0]["data"]["status"] == "5.1.3"
    assert "NOOP" not in rx.commands and rx.messages[0].rcpts == ["ok@s.test"]
