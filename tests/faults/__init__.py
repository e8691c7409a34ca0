"""Fault injection: what must hold when a part dies, stalls or runs out of room.

Here:
- test_agent_kill: the local agent SIGKILLed mid-rollout -> the deploy completes on a new agent, exact
  replica count, no orphans.
- test_canary_kill: the canary's flow process SIGKILLed before and at its first step -> no client error,
  a re-run names what is left over and how to finish; rollback then a canary converge.
- test_full_disk: the agent's home on a full tmpfs -> the deploy fails naming the path, changes nothing,
  serving goes on; with space again the same deploy converges and survives an agent restart.
- test_s3_errors: S3 answering every other request 503 SlowDown -> upload, existence check and the
  replica's download are retried; the deploy converges.

Elsewhere, next to the feature they exercise:
- a replica SIGKILLed under load -> replaced, its requests fail over
  (tests/integration/test_autoscaling.py::test_a_killed_replica_is_replaced_and_its_requests_fail_over);
- the agent SIGKILLed while idle -> no orphan replicas, every API back
  (tests/e2e/test_deploy_local.py::test_agent_killed_comes_back_with_every_api_and_no_orphans);
- the deploy's flow process SIGKILLed before, in the middle of and at the end of a rolling update, under
  load -> no request lost, a re-run converges
  (tests/e2e/test_rolling_updates.py::test_killing_the_flow_at_each_step_then_redeploying_converges);
- a replica crashing, failing to load or never ready during a rollout -> rolled back, no request lost
  (tests/e2e/test_rolling_updates.py::test_a_broken_version_is_rolled_back_without_losing_a_request);
- Kubernetes API answering 429/500/409 on 30% of calls -> the deploy converges; a 422 fails at once
  (tests/integration/test_kubernetes_backend.py::test_a_flaky_api_server_still_deploys_and_a_422_fails_at_once),
  and 150 ms per call on top of 20% faults -> it still converges (::test_a_slow_and_flaky_api_server_still_converges);
- a package store that is unreachable -> retried, then a clear failure; a missing bucket -> fails at once
  (tests/e2e/test_prefect_integration.py); a tampered package -> refused
  (tests/integration/test_package_stores.py, tests/integration/test_local_backend.py);
- clock jumps -> canary windows are recomputed from the clock at every decision: a fixed clock jumping a
  weekend (tests/e2e/test_canary.py), DST gaps and repeats and a year minute by minute
  (tests/unit/test_windows.py).
"""
