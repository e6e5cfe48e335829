"""Integration tests of retries, the call budget and the CPU-quota pause.

The fake cloud injects each retryable fault alone and mixed, on chosen
calls.  The tests check that mdhunt ends in the documented outcome, logs
every retry and loses no result.  Faults that must not be retried must
cause exactly one request.
"""

import os
import re
import time

from harness import (NO_ROLES_CLIENT_ID, NO_ROLES_SECRET, RETRYABLE_KINDS,
                     SCRIPT_TIMEOUT, SECRET_MARKER, TOKEN_MARKER,
                     FakeCloudTest, REPO, cpu_quota_fault, device_dataset,
                     device_rows, fault, fault_script, retryable_fault,
                     run_mdhunt, server_error_fault, write_config,
                     write_secret)
from test_runner import T0, RunnerTest

RULE = os.path.join(REPO, "config", "rules",
                    "rmm-zohoassist-file-signature.yaml")
BACKENDS = ("graph", "defender")
RETRY_RE = re.compile(r"retry (\d+) of (\d+) in ([0-9.]+) s after "
                      r"(HTTP \d+|no HTTP status) \([a-z_]+, request id "
                      r"([^)]+)\)")

# Enough calls a minute that pacing never slows the tests down.
NO_PACING = {"max_calls_per_minute": 1000, "max_calls_per_hour": 100000}


def api_keys(**keys):
    """[api] lines: NO_PACING with keys replacing its values."""
    merged = dict(NO_PACING)
    merged.update(keys)
    return "".join("%s = %s\n" % item for item in merged.items())


def retry_lines(stderr):
    """The retry lines of a log, as match objects."""
    return [m for m in map(RETRY_RE.search, stderr.splitlines()) if m]


class HuntRetryTest(FakeCloudTest):

    def setUp(self):
        super().setUp()
        self.fake.set_dataset(device_dataset(3))
        self.secret_file = write_secret(self.tmp_path("secret"))

    def config(self, backend="graph", api=None, store=False, **kwargs):
        extra = api_keys(**(api or {}))
        if store:
            extra += "\n[store]\npath = %s\n" % self.tmp_path("mdhunt.db")
        kwargs.setdefault("secret_file", self.secret_file)
        kwargs.setdefault("timeout", SCRIPT_TIMEOUT)
        return write_config(self.tmp_path("mdhunt-%s.ini" % backend),
                            self.fake, backend, extra=extra, **kwargs)

    def hunt(self, backend="graph", config=None, **kwargs):
        config = config or self.config(backend, **kwargs)
        result = run_mdhunt(["-c", config, "hunt", RULE, "--format",
                             "ndjson"])
        for name, text in (("stdout", result.stdout.decode(
                "utf-8", "replace")), ("stderr", result.stderr)):
            self.assertNotIn(SECRET_MARKER, text, name)
            self.assertNotIn(TOKEN_MARKER, text, name)
        return result

    def hunting_requests(self, backend):
        return self.fake.requests(backend)

    def clean_output(self, backend):
        self.fake.set_faults()
        result = self.hunt(backend)
        self.assertEqual(result.code, 0, result.stderr)
        self.fake.clear_requests()
        return result.stdout

    def test_each_fault_kind_retried(self):
        for backend in BACKENDS:
            expected = self.clean_output(backend)
            for kind in RETRYABLE_KINDS:
                with self.subTest(backend=backend, kind=kind):
                    self.fake.clear_requests()
                    entry = retryable_fault(kind, backend)
                    # Never two expired tokens in a row: one 401 is
                    # retried, a second one in a row fails.
                    entry["on_calls"] = [1] if kind == "expired_token" \
                        else [1, 2]
                    self.fake.set_faults(entry)
                    result = self.hunt(backend)
                    self.assertEqual(result.code, 0, result.stderr)
                    self.assertEqual(result.stdout, expected)
                    faulted = len(entry["on_calls"])
                    self.assertEqual(len(retry_lines(result.stderr)),
                                     faulted, result.stderr)
                    self.assertEqual(len(self.hunting_requests(backend)),
                                     faulted + 1)

    def test_mixed_faults_retried(self):
        kinds = ["reset", "throttle", "not_json", "server_error"]
        faults = []
        for call, kind in enumerate(kinds, start=1):
            entry = retryable_fault(kind, "defender")
            entry["on_calls"] = [call]
            faults.append(entry)
        self.fake.set_faults(*faults)
        result = self.hunt("defender")
        self.assertEqual(result.code, 0, result.stderr)
        lines = retry_lines(result.stderr)
        self.assertEqual([int(m.group(1)) for m in lines], [1, 2, 3, 4])
        self.assertEqual([m.group(4) for m in lines],
                         ["no HTTP status", "HTTP 429", "HTTP 200",
                          "HTTP 500"])
        self.assertEqual(len(self.hunting_requests("defender")), 5)

    def test_retry_line_names_request_id(self):
        self.fake.set_faults(server_error_fault("graph", count=1))
        result = self.hunt()
        self.assertEqual(result.code, 0, result.stderr)
        lines = retry_lines(result.stderr)
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0].group(1), "1")
        self.assertEqual(lines[0].group(2), "4")
        self.assertLessEqual(float(lines[0].group(3)), 1.0)
        self.assertEqual(lines[0].group(4), "HTTP 500")
        # Graph's request-id header, a GUID the fake makes per request.
        self.assertRegex(lines[0].group(5), r"^[0-9a-f-]{36}$")

    def test_quota_named_in_retry_line(self):
        self.fake.set_faults(retryable_fault("throttle", "defender",
                                             count=1))
        result = self.hunt("defender")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("45 per 00:01:00", retry_lines(
            result.stderr)[0].string)

    def test_expired_token_renewed_once(self):
        self.fake.set_faults(retryable_fault("expired_token", "graph",
                                             count=1))
        result = self.hunt()
        self.assertEqual(result.code, 0, result.stderr)
        tokens = self.fake.requests("token")
        hunts = self.fake.requests("graph")
        self.assertEqual(len(tokens), 2)
        self.assertEqual(hunts[1]["headers"]["authorization"],
                         "Bearer " + tokens[1]["issued_token"])

    def test_second_expired_token_fails(self):
        self.fake.set_faults(retryable_fault("expired_token", "graph"))
        result = self.hunt()
        self.assertEqual(result.code, 3, result.stderr)
        self.assertEqual(len(self.fake.requests("graph")), 2)

    def assert_not_retried(self, result, code, backend="graph"):
        self.assertEqual(result.code, code, result.stderr)
        self.assertEqual(len(self.hunting_requests(backend)), 1)
        self.assertEqual(retry_lines(result.stderr), [])

    def test_query_errors_not_retried(self):
        for kind in ("syntax", "preempted", "too_large"):
            with self.subTest(kind=kind):
                self.fake.reset()
                self.fake.set_query_error(kind)
                self.assert_not_retried(self.hunt(), 4)

    def test_timeout_status_not_retried(self):
        for status in (408, 504):
            with self.subTest(status=status):
                self.fake.reset()
                self.fake.set_faults(fault("graph", status=status, error={
                    "code": "GatewayTimeout", "message": "timed out"}))
                self.assert_not_retried(self.hunt(), 4)

    def test_missing_permission_not_retried(self):
        secret = write_secret(self.tmp_path("noroles"), NO_ROLES_SECRET)
        result = self.hunt(config=self.config(
            client_id=NO_ROLES_CLIENT_ID, secret_file=secret))
        self.assert_not_retried(result, 3)

    def test_zero_retries_means_none(self):
        self.fake.set_faults(server_error_fault("graph", count=1))
        result = self.hunt(api={"max_retries": 0})
        self.assert_not_retried(result, 5)

    def test_gives_up_after_max_retries(self):
        self.fake.set_faults(server_error_fault("graph"))
        result = self.hunt(api={"max_retries": 1})
        self.assertEqual(result.code, 5, result.stderr)
        self.assertEqual(len(self.fake.requests("graph")), 2)
        self.assertIn("gave up after 1 retry", result.stderr)

    def test_hour_quota_fails_at_once(self):
        self.fake.set_faults(fault("defender", status=429, error={
            "code": "429", "message": "API calls quota exceeded! maximum "
            "allowed 1500 per 01:00:00"}))
        started = time.monotonic()
        result = self.hunt("defender")
        self.assertLess(time.monotonic() - started, 10)
        self.assert_not_retried(result, 5, "defender")
        self.assertIn("1500 per 01:00:00", result.stderr)
        self.assertIn("max_retry_time", result.stderr)

    def test_cpu_quota_pauses_tenant(self):
        config = self.config(store=True)
        self.fake.set_faults(cpu_quota_fault("graph", count=1))
        first = self.hunt(config=config)
        self.assert_not_retried(first, 5)
        self.assertIn("paused until", first.stderr)
        self.assertTrue(os.path.exists(self.tmp_path("mdhunt.db.budget")))

        self.fake.clear_requests()
        second = self.hunt(config=config)
        self.assertEqual(second.code, 5, second.stderr)
        self.assertIn("paused until", second.stderr)
        self.assertEqual(self.fake.requests("graph"), [])

    def test_budget_shared_through_store(self):
        config = self.config(store=True, api={"max_calls_per_minute": 2,
                                              "max_retry_time": "5s"})
        for _ in range(2):
            result = self.hunt(config=config)
            self.assertEqual(result.code, 0, result.stderr)
        third = self.hunt(config=config)
        self.assertEqual(third.code, 5, third.stderr)
        self.assertIn("max_calls_per_minute = 2", third.stderr)
        self.assertEqual(len(self.fake.requests("graph")), 2)

    def test_budget_in_memory_without_store(self):
        config = self.config(api={"max_calls_per_minute": 1,
                                  "max_retry_time": "5s"})
        for _ in range(2):
            result = self.hunt(config=config)
            self.assertEqual(result.code, 0, result.stderr)
        self.assertFalse(os.path.exists(self.tmp_path("mdhunt.db.budget")))


def calls_made(plan, rules):
    """How many requests rules make when every faulted call is retried."""
    calls = rules
    call = 1
    while call <= calls:
        if call in plan:
            calls += 1
        call += 1
    return calls


class RunOnceResilienceTest(RunnerTest):

    def write_config(self, secret_file=None, extra=""):
        return write_config(
            self.tmp_path("mdhunt.ini"), self.fake, "graph",
            secret_file=secret_file or self.secret_file,
            timeout=SCRIPT_TIMEOUT,
            extra=api_keys() + "\n[rules]\npath = %s\n\n[store]\npath = %s\n%s"
                  % (self.rules_dir, self.store, extra))

    def test_fifty_rules_survive_faults(self):
        rules = ["rule%02d" % i for i in range(50)]
        for rule_id in rules:
            self.write_rule(rule_id)
        faults, plan = fault_script(20250301, "graph", calls=200, rate=0.3)
        self.fake.set_faults(*faults)

        result = self.run_once(now=None)
        retries = retry_lines(result.stderr)
        calls = calls_made(plan, len(rules))
        faulted = [c for c in plan if c <= calls]
        self.assertGreaterEqual(len(faulted), 10)
        self.assertEqual(len(self.fake.requests("graph")), calls)
        self.assertEqual(len(retries), len(faulted), result.stderr)
        logged = [e for e in self.fake.requests("graph") if e["fault"]]
        self.assertEqual(len(logged), len(faulted))

        statuses = {r["id"]: r for r in self.json_of("status")["rules"]}
        for rule_id in rules:
            with self.subTest(rule=rule_id):
                last = statuses[rule_id]["last_run"]
                self.assertEqual(last["status"], "ok")
                self.assertEqual(last["rows"], len(self.rows))
        devices = self.json_of("devices")["devices"]
        self.assertEqual(len(devices), len(rules) * len(self.rows))

    def test_cpu_quota_skips_other_rules(self):
        for rule_id in ("first", "second", "third"):
            self.write_rule(rule_id)
        self.fake.set_faults(cpu_quota_fault("graph", count=1))
        result = self.run_once(now=T0, code=6)
        self.assertEqual(len(self.fake.requests("graph")), 1)
        self.assertIn("2 rules skipped and recorded as failed (cpu_quota)",
                      result.stderr)
        for rule_id in ("first", "second", "third"):
            with self.subTest(rule=rule_id):
                status = self.rule_status(rule_id)
                self.assertEqual(status["last_run"]["status"], "failed")
                self.assertEqual(status["last_error"]["kind"], "cpu_quota")

    def test_preempted_rule_tried_once_more(self):
        self.write_rule("heavy")
        self.fake.set_query_error("preempted")
        self.run_once(now=T0, code=6)
        self.assertEqual(len(self.hunting_queries()), 1)

        # Not again before its next slot.
        self.run_once(now="2025-03-01T00:30:00Z")
        self.assertEqual(len(self.hunting_queries()), 1)

        self.run_once(now="2025-03-01T01:00:00Z", code=6)
        self.assertEqual(len(self.hunting_queries()), 2)

        held = self.run_once(now="2025-03-01T02:00:00Z")
        self.assertEqual(len(self.hunting_queries()), 2)
        self.assertIn("rule heavy: not run", held.stderr)

        forced = self.run_once("--rule", "heavy",
                               now="2025-03-01T02:00:00Z", code=4)
        self.assertEqual(len(self.hunting_queries()), 3, forced.stderr)

    def test_changed_query_runs_again(self):
        path = self.write_rule("heavy")
        self.fake.set_query_error("preempted")
        self.run_once(now=T0, code=6)
        self.run_once(now="2025-03-01T01:00:00Z", code=6)
        with open(path, "a", encoding="utf-8") as f:
            f.write("  | take 100\n")
        self.fake.reset()
        self.fake.set_dataset({"columns": device_dataset(0)["columns"],
                               "rows": device_rows(3, seed=11)})
        self.run_once(now="2025-03-01T02:00:00Z")
        self.assertEqual(len(self.hunting_queries()), 1)
        self.assertEqual(self.rule_status("heavy")["last_run"]["status"],
                         "ok")
