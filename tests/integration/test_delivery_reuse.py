"""Connection reuse, per-destination limits, and crash safety, counted at
the receiver (a scripted SMTP server that counts connections)."""
import re
import time

import pytest

from delivery_receivers import (Dnsmasq, ScriptedSMTP, delivery_sections, free_port_on, loopback_net,
                                submit, wait_for)


@pytest.fixture
def env(make_server):
    pre = loopback_net()
    mx_ip = pre + "2"
    port = free_port_on([mx_ip])
    dns = Dnsmasq(pre + "1", ["--mx-host=r.test,mx.r.test,10", f"--host-record=mx.r.test,{mx_ip}"]).start()
    started = []

    class Env:
        def receiver(self, **kw):
            r = ScriptedSMTP(mx_ip, port, **kw).start()
            started.append(r)
            return r

        def server(self, **delivery):
            return make_server(delivery_sections(dns.server, port, **delivery))

    yield Env()
    for r in started:
        r.stop()
    dns.stop()


def stats(srv):
    import json
    return json.loads(srv.cli("queue", "stats", "--json").stdout)


def test_hundred_messages_reuse_a_few_connections(env):
    rx = env.receiver()
    srv = env.server(max_connections_per_domain=3)
    submit(srv, 100, "app@src.test", ["u@r.test"])
    wait_for(lambda: len(rx.messages) >= 100, 30, "100 messages")
    assert len(rx.messages) == 100
    assert srv.stop() == 0  # clean exit (and no leaks under ASan)
    assert rx.connections <= 3 and rx.max_active <= 3
    # Each reused connection resets between transactions.
    assert rx.commands.count("RSET") == 100 - rx.connections


def test_messages_per_connection_limit(env):
    rx = env.receiver()
    srv = env.server(max_connections_per_domain=1, max_msgs_per_conn=10)
    submit(srv, 30, "app@src.test", ["u@r.test"])
    wait_for(lambda: len(rx.messages) >= 30, 30, "30 messages")
    assert rx.connections == 3 and rx.max_active == 1
    assert rx.commands.count("QUIT") >= 2


def test_messages_per_second_token_bucket(env):
    rx = env.receiver()
    srv = env.server(msgs_per_second=10)
    submit(srv, 20, "app@src.test", ["u@r.test"])
    wait_for(lambda: len(rx.messages) >= 20, 30, "20 messages")
    times = sorted(m.at for m in rx.messages)
    # A burst of 10 (one second's worth), then 10 more at 10/s.
    assert times[-1] - times[0] >= 0.8


def test_idle_connection_closes_after_idle_timeout(env):
    rx = env.receiver()
    srv = env.server(idle_timeout="300ms")
    submit(srv, 1, "app@src.test", ["u@r.test"])
    wait_for(lambda: rx.messages, 10, "the message")
    wait_for(lambda: rx.active == 0, 5, "the idle connection to close")
    assert rx.commands[-1] == "QUIT"
    srv.wait_log("connection_idle_closed")


def test_kill_9_during_delivery_loses_nothing(env):
    """1,000 messages; SIGKILL while they are being delivered; restart:
    every message arrives at least once (a duplicate is allowed)."""
    rx = env.receiver()
    srv = env.server(msgs_per_second=400, max_connections_per_domain=4)
    ids = submit(srv, 1000, "app@src.test", ["u@r.test"], subject="crash")
    assert len(ids) == 1000
    wait_for(lambda: len(rx.messages) >= 150, 30, "some deliveries")
    srv.kill()
    before = len(rx.messages)
    assert before < 1000, "delivery finished before the kill; the test proves nothing"
    srv.start()
    subjects = lambda: {re.search(rb"Subject: crash (\d+)", m.data).group(1) for m in list(rx.messages)}
    wait_for(lambda: len(subjects()) == 1000, 60, "all 1000 messages")
    assert subjects() == {str(i).encode() for i in range(1000)}
    wait_for(lambda: stats(srv).get("delivered") == 1000, 20, "the spool to agree")


def test_sigterm_lets_the_transaction_in_progress_finish(env):
    """Drain: SIGTERM while the receiver is still answering the final dot;
    the server waits, records the delivery, and exits cleanly."""
    def slow_dot(msg):
        time.sleep(1.0)  # blocks this receiver's loop: the reply comes late
        return None
    rx = env.receiver(dot=slow_dot)
    srv = env.server()
    [i] = submit(srv, 1, "app@src.test", ["u@r.test"])
    wait_for(lambda: "DATA" in rx.commands, 10, "DATA")
    assert srv.stop() == 0  # one SIGTERM, then wait
    assert len(rx.messages) == 1
    from delivery_receivers import rcpt_states
    assert rcpt_states(srv, i) == {"u@r.test": "delivered"}
    assert not any("LeakSanitizer" in str(line.get("text", "")) for line in srv.logs())


def test_paused_queues_but_sends_nothing_until_unpaused_by_sighup(env):
    import signal as sig
    rx = env.receiver()
    srv = env.server(paused="yes")
    [i] = submit(srv, 1, "app@src.test", ["u@r.test"])
    time.sleep(0.8)  # eight scheduler intervals
    assert rx.connections == 0
    from delivery_receivers import rcpt_states
    assert rcpt_states(srv, i) == {"u@r.test": "queued"}
    srv.sections["delivery"]["paused"] = "no"
    srv.write_config()
    srv.signal(sig.SIGHUP)
    wait_for(lambda: rx.messages, 10, "delivery after SIGHUP")


def test_a_slow_destination_does_not_starve_the_others(make_server):
    """100 messages for a slow domain (one connection, 0.2 s per message)
    are queued before one message for a fast domain: the fast one still
    goes out at once, not after the slow backlog."""
    pre = loopback_net()
    slow_ip, fast_ip = pre + "2", pre + "3"
    port = free_port_on([slow_ip, fast_ip])
    dns = Dnsmasq(pre + "1", ["--mx-host=slow.test,mx.slow.test,10", f"--host-record=mx.slow.test,{slow_ip}",
                              "--mx-host=fast.test,mx.fast.test,10", f"--host-record=mx.fast.test,{fast_ip}"]).start()
    slow = ScriptedSMTP(slow_ip, port, dot=lambda m: time.sleep(0.2)).start()
    fast = ScriptedSMTP(fast_ip, port).start()
    try:
        sections = delivery_sections(dns.server, port, scan_batch=40)
        sections["domain slow.test"] = {"max_connections": "1"}
        srv = make_server(sections)
        submit(srv, 100, "app@src.test", ["u@slow.test"])
        submit(srv, 1, "app@src.test", ["u@fast.test"])
        wait_for(lambda: fast.messages, 5, "the fast domain's message")
        assert len(slow.messages) < 30
        assert slow.max_active == 1
    finally:
        slow.stop()
        fast.stop()
        dns.stop()
