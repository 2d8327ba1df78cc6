"""Reliability and security suite: real servers over loopback, real ranks over gloo.

- test_faults.py: a fault matrix; each fault fails its job with a reason naming it, the
  jobs queued behind it succeed, and the server is ready again within its setup time + 5 s.
- test_load.py: 10,000 jobs from 32 clients against a queue of 64; nothing lost, no 5xx.
- test_fuzz.py: schemathesis against the server's own OpenAPI document.
- test_restart.py: job records survive a restart of the server (SIGTERM or SIGKILL).
- test_security.py: API key, body limit, output_path confinement, loopback bind, no traces.

Idle ranks outliving the collective timeout are proven by
tests/integration/test_idle_keepalive.py (not repeated here).

A run writes what it measured (each fault's reason and recovery time, the load test's
throughput and memory) to ``reliability-report.json`` and ``.md`` in pytest's base temp
directory (and to $PARA_ATTN_RELIABILITY_REPORT when set) and prints the table at the end.
"""
