"""The kill loop (nothing acknowledged is lost across SIGKILLs) and the
leak run (a clean exit after a long run, under valgrind or LeakSanitizer)."""
import os
import random
import re
import signal
import threading
import time

from rel_common import (ASAN, SLOW, Ledger, RelServer, Sink, http_worker, log, relay_sections,
                        smtp_worker, wait_until)


# ---- scenario 1: the kill loop --------------------------------------------------------------

def kill_loop(tmp_path, messages, kills, max_size=1024 * 1024, max_rcpts=50, smtp_workers=4,
              http_workers=4, interval=(0.0, 0.4), settle=120, seed=None):
    """Submit `messages` over SMTP and HTTP concurrently while SIGKILLing
    `posthaste serve` at random moments `kills` times (restarting it each
    time), with delivery running to an aiosmtpd sink. Asserts that every
    acknowledged (Message-ID, recipient) reaches the sink; returns figures."""
    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    log(f"kill loop: {messages} messages, {kills} kills, seed {seed}")
    sink = Sink(os.path.join(str(tmp_path), "sink.jsonl")).start()
    srv = RelServer(tmp_path / "srv", relay_sections(sink.port, max_connections_per_domain=8))
    try:
        srv.start_and_wait()
        key = srv.create_key()
        ledger = Ledger()
        current = [srv]
        workers = smtp_workers + http_workers
        per = [messages // workers + (1 if k < messages % workers else 0) for k in range(workers)]
        deadline = time.monotonic() + 3600
        threads = []
        for k in range(workers):
            fn = smtp_worker if k < smtp_workers else http_worker
            t = threading.Thread(target=fn, args=(lambda: current[0], key, f"w{k}", per[k], ledger,
                                                  seed + k, max_size, max_rcpts, deadline), daemon=True)
            threads.append(t)
        t0 = time.monotonic()
        for t in threads:
            t.start()
        done_kills = 0
        acked_at_kill = []
        # Random moments spread over the whole run: each kill waits for a
        # random point of progress (submission attempts), then a random
        # fraction of a second, so kills land in SMTP dialogues, HTTP
        # requests, group commits and deliveries alike. If the clients
        # finish first, the remaining kills hit deliveries in flight.
        # The pause is not scaled by SLOW: under ASan the clients are not
        # slower by as much as the server, and scaled pauses let them finish
        # before the last kills (a flaky "kills hit running submissions").
        marks = sorted(rng.sample(range(1, max(messages * 8 // 10, kills + 1)), kills))
        while done_kills < kills:
            wait_until(lambda: ledger.attempts >= marks[done_kills] or
                       not any(t.is_alive() for t in threads), 600, "submission progress", 0.01)
            time.sleep(rng.uniform(*interval))
            acked_at_kill.append(any(t.is_alive() for t in threads))
            srv.sigkill()
            done_kills += 1
            srv.start_and_wait()
        for t in threads:
            t.join(timeout=600 * SLOW)
            assert not t.is_alive(), "a client thread did not finish"
        submit_secs = time.monotonic() - t0
        want = ledger.pairs()
        log(f"kill loop: {done_kills} kills in {submit_secs:.1f}s; {len(ledger.acked)} messages "
            f"acknowledged ({len(want)} recipients) of {ledger.attempts} attempts; "
            f"failures while down: {dict(ledger.failures)}")
        assert len(ledger.acked) > 0, "nothing was acknowledged; the test proves nothing"
        during = sum(1 for a in acked_at_kill if a)
        assert during >= min(kills, 3) and ledger.failures, \
            f"only {during} kills hit running submissions; the test proves too little"

        def all_there():
            have = sink.handler.snapshot()
            return not [p for p in want if have.get(p, 0) == 0]
        try:
            wait_until(all_there, settle, "every acknowledged message at the receiver", interval=0.5)
        except AssertionError:
            have = sink.handler.snapshot()
            lost = sorted(p for p in want if have.get(p, 0) == 0)
            raise AssertionError(f"{len(lost)} acknowledged recipients LOST, e.g. {lost[:5]}; "
                                 f"stats {srv.stats()}")
        have = sink.handler.snapshot()
        dups = sum(n - 1 for p, n in have.items() if p in want and n > 1)
        rc, text, direct = srv.integrity()
        assert rc == 0 and direct == "ok", (text, direct)
        figures = {"seed": seed, "kills": done_kills, "kills_during_submission": during,
                   "attempts": ledger.attempts,
                   "acked_messages": len(ledger.acked), "acked_recipients": len(want), "lost": 0,
                   "duplicates": dups, "duplicate_pct": round(100.0 * dups / len(want), 4),
                   "duplicates_per_kill": round(dups / max(done_kills, 1), 1),
                   "submit_seconds": round(submit_secs, 1),
                   "total_seconds": round(time.monotonic() - t0, 1)}
        log(f"kill loop result: {figures}")
        return figures
    finally:
        srv.kill()
        sink.stop()



# ---- leaks: a 1,000-message run under valgrind or LeakSanitizer -----------------------------

def leak_run(tmp_path, messages=1000, valgrind=False):
    """Submit `messages` (half SMTP, half HTTP, with delivery to a sink),
    stop with SIGTERM and require a clean exit with no leak reported: by
    valgrind (definite and indirect leaks are errors) when `valgrind`, else
    by LeakSanitizer when the binary is an ASan build (make test-asan)."""
    sink = Sink().start()
    srv = RelServer(tmp_path / "srv", relay_sections(sink.port))
    vg_log = os.path.join(str(tmp_path), "valgrind.log")
    if valgrind:
        srv.wrapper = ["valgrind", "--leak-check=full", "--show-leak-kinds=definite,indirect",
                       "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99",
                       "--num-callers=30", f"--log-file={vg_log}"]
    slow = 30 if valgrind else 1
    try:
        srv.start_and_wait(timeout=20 * slow)
        key = srv.create_key()
        ledger = Ledger()
        deadline = time.monotonic() + 1800
        half = messages // 2
        ts = [threading.Thread(target=smtp_worker, args=(lambda: srv, key, "leak-s", half, ledger, 1,
                                                         64 * 1024, 5, deadline)),
              threading.Thread(target=http_worker, args=(lambda: srv, key, "leak-h", messages - half,
                                                         ledger, 2, 64 * 1024, 5, deadline))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(ledger.acked) == messages, f"only {len(ledger.acked)} accepted: {dict(ledger.failures)}"
        want = ledger.pairs()
        wait_until(lambda: not [p for p in want if sink.handler.snapshot().get(p, 0) == 0],
                   60 * slow, "every message delivered", 0.5)
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.proc.wait(timeout=120 * slow * SLOW)
        srv.log.close()
        text = srv.tail(20000)
        assert "LeakSanitizer" not in text and "AddressSanitizer" not in text, text[-6000:]
        summary = ""
        if valgrind:
            with open(vg_log, errors="replace") as f:
                vg = f.read()
            summary = "\n".join(line.split("== ", 1)[-1] for line in vg.splitlines()
                                if "lost:" in line or "ERROR SUMMARY" in line)
            assert rc == 0, f"valgrind exit {rc}:\n{vg[-8000:]}"
            assert re.search(r"definitely lost: 0 bytes|All heap blocks were freed", vg), vg[-8000:]
        assert rc == 0, f"server exit {rc}:\n{text[-4000:]}"
        figures = {"messages": messages, "delivered_recipients": len(want), "exit": rc,
                   "checker": "valgrind" if valgrind else ("LeakSanitizer" if ASAN else "none (plain build)"),
                   "summary": summary}
        log(f"leak run result: {figures}")
        return figures
    finally:
        srv.kill()
        sink.stop()
