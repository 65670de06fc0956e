"""No leaks over a 1,000-message run (`make test-valgrind`): the server is
run under valgrind (definite and indirect leaks are errors), delivers every
message to an aiosmtpd sink and exits 0 on SIGTERM. The short profile in
`make test-asan` does the same with LeakSanitizer."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rel_harness as h  # noqa: E402


def test_no_leaks_in_a_1000_message_run(tmp_path):
    f = h.leak_run(tmp_path, messages=int(os.environ.get("REL_LEAK_MESSAGES", "1000")), valgrind=True)
    assert f["exit"] == 0
