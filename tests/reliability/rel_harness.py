"""The reliability harness: crash loops, receiver faults, disk full,
resource exhaustion and bad TLS, each a function taking its counts so the
full profile (tests/reliability/, `make test-reliability`) and the short
profile inside `make test` (tests/integration/test_reliability_short.py)
run the same code with different sizes.

Everything drives the real `posthaste serve` (the integration harness's
Server) against real clients (smtplib, requests) and real receivers
(aiosmtpd, or the scripted asyncio receiver of the delivery tests), on
loopback only. Every loop is bounded in count and time; only processes
started here are stopped, by their handle. One module per scenario:
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rel_disk import disk_full  # noqa: E402,F401
from rel_exhaust import resource_exhaustion  # noqa: E402,F401
from rel_faults import receiver_faults  # noqa: E402,F401
from rel_kill import kill_loop, leak_run  # noqa: E402,F401
from rel_tls import bad_tls  # noqa: E402,F401
