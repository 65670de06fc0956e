"""The scheduler's periodic scan keeps its period after early runs.

Every outcome commit (and every submission) runs the delivery scan at
once. Those early runs must not push the periodic scan into the future:
mail that only the periodic scan finds (written to the spool by another
process, or whose retry time has come) must still go out within about one
scheduler_interval. Found by bench/relay, where a burst of 5,000 messages
left the last ~1,400 queued for minutes.
"""
from conftest import SLOW, free_port
from delivery_receivers import ScriptedSMTP, delivery_sections, submit, wait_for


def test_periodic_scan_still_runs_after_a_burst(make_server):
    port = free_port()
    with ScriptedSMTP("127.0.0.1", port) as rx:
        srv = make_server(delivery_sections(route="relay", relay_host="127.0.0.1", relay_port=port,
                                            relay_tls="none", tls_policy_relay="none",
                                            scheduler_interval="1s", idle_timeout="10s"))
        # A burst: each of these outcomes runs the scan early once.
        submit(srv, 150, "app@src.test", ["burst@dst.test"])
        wait_for(lambda: len(rx.messages) == 150, 30 * SLOW, "the burst delivered")
        # Written behind the server's back: only the periodic scan sees these.
        submit(srv, 3, "app@src.test", ["late@dst.test"], subject="late")
        # With the bug the next periodic scan was ~150 intervals away.
        wait_for(lambda: len(rx.messages) == 153, 5 * SLOW, "the periodic scan to find the late mail")
