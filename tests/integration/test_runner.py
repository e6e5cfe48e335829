"""Integration tests of `mdhunt run` and the store commands.

They run the test build (MDHUNT_BIN, compiled with -DMDHUNT_TEST_CLOCK)
against the fake cloud.  One-cycle runs move the clock between
invocations with MDHUNT_TEST_NOW; the daemon tests use the real clock.
Every wait is bounded, and the slow queries are faults with a delay that
the tests cut short with a signal.
"""

import json
import os
import signal
import sqlite3
import subprocess
import time

from harness import (EXPIRED_SECRET, SECRET_MARKER, TOKEN_MARKER,
                     FakeCloudTest, REPO, device_dataset, device_rows,
                     fault, mdhunt_bin, mdhunt_env, request_body,
                     run_mdhunt, write_config, write_secret)

T0 = "2025-03-01T00:00:00Z"
T0_PLUS_30M = "2025-03-01T00:30:00Z"
T0_PLUS_1H = "2025-03-01T01:00:00Z"
T0_PLUS_1H5M = "2025-03-01T01:05:00Z"

# Seconds a signalled mdhunt may take to exit.
STOP_LIMIT = 5
# Seconds to wait for mdhunt to reach a state (a request, a log line).
WAIT_LIMIT = 15
SLOW_QUERY = 20


def rule_text(rule_id, frequency="1h", period="1d"):
    return ("id: %s\n"
            "name: Test rule %s\n"
            "queryFrequency: %s\n"
            "queryPeriod: %s\n"
            "entityMappings:\n"
            "  - entityType: Host\n"
            "    fieldMappings:\n"
            "      - identifier: HostName\n"
            "        columnName: DeviceName\n"
            "query: |\n"
            "  DeviceFileCertificateInfo\n"
            "  | where Signer has '%s'\n"
            "  | summarize FirstSeen=min(Timestamp), LastSeen=max(Timestamp),"
            " Report=make_set(ReportId), Count=count() by DeviceId,"
            " DeviceName\n" % (rule_id, rule_id, frequency, period, rule_id))


def wait_for(condition, what, limit=WAIT_LIMIT):
    """Poll condition() until it is true; fail after limit seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out after %d s waiting for %s"
                         % (limit, what))


class RunnerTest(FakeCloudTest):

    def setUp(self):
        super().setUp()
        self.rows = device_rows(3, seed=11)
        self.fake.set_dataset({"columns": device_dataset(0)["columns"],
                               "rows": self.rows})
        self.rules_dir = self.tmp_path("rules")
        os.mkdir(self.rules_dir)
        self.store = self.tmp_path("mdhunt.db")
        self.secret_file = write_secret(self.tmp_path("secret"))
        self.config = self.write_config()
        self.processes = []
        self.addCleanup(self.kill_processes)

    def write_config(self, secret_file=None, extra=""):
        return write_config(
            self.tmp_path("mdhunt.ini"), self.fake, "graph",
            secret_file=secret_file or self.secret_file,
            extra="\n[rules]\npath = %s\n\n[store]\npath = %s\n%s"
                  % (self.rules_dir, self.store, extra))

    def write_rule(self, rule_id, frequency="1h", period="1d"):
        path = os.path.join(self.rules_dir, rule_id + ".yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(rule_text(rule_id, frequency, period))
        return path

    def set_rows(self, rows):
        self.rows = rows
        self.fake.set_dataset({"columns": device_dataset(0)["columns"],
                               "rows": rows})

    def mdhunt(self, *args, now=None):
        """Run mdhunt -c CONFIG ARGS; check that no secret leaked."""
        env = {"MDHUNT_TEST_NOW": now} if now is not None else None
        result = run_mdhunt(["-c", self.config] + list(args), env=env)
        self.assert_no_secret(result.stdout.decode("utf-8", "replace"))
        self.assert_no_secret(result.stderr)
        return result

    def assert_no_secret(self, text):
        self.assertNotIn(SECRET_MARKER, text)
        self.assertNotIn(TOKEN_MARKER, text)

    def run_once(self, *args, now=T0, code=0):
        result = self.mdhunt("run", "--once", *args, now=now)
        self.assertEqual(result.code, code, result.stderr)
        return result

    def json_of(self, *args, now=None):
        result = self.mdhunt(*args, "--format", "json", now=now)
        self.assertEqual(result.code, 0, result.stderr)
        return json.loads(result.stdout)

    def rule_status(self, rule_id, now=None):
        for rule in self.json_of("status", now=now)["rules"]:
            if rule["id"] == rule_id:
                return rule
        raise AssertionError("mdhunt status lists no rule %s" % rule_id)

    def hunting_queries(self):
        """The KQL of every hunting request the fake received."""
        return [json.loads(request_body(entry))["Query"]
                for entry in self.fake.requests("graph")]

    def start(self, *args, now=None):
        """Start mdhunt in the background with stderr in a file."""
        env = {"MDHUNT_TEST_NOW": now} if now is not None else {}
        log_path = self.tmp_path("stderr-%d.log" % len(self.processes))
        log = open(log_path, "wb")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [mdhunt_bin(), "-c", self.config] + list(args), cwd=REPO,
            env=mdhunt_env(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log)
        process.log_path = log_path
        self.processes.append(process)
        return process

    def log_of(self, process):
        with open(process.log_path, encoding="utf-8",
                  errors="replace") as f:
            return f.read()

    def kill_processes(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def stop(self, process, signo=signal.SIGTERM):
        """Send signo; return (exit status, seconds it took to exit)."""
        started = time.monotonic()
        process.send_signal(signo)
        try:
            code = process.wait(STOP_LIMIT)
        except subprocess.TimeoutExpired:
            raise AssertionError("mdhunt did not exit within %d s of %s"
                                 % (STOP_LIMIT, signo.name)) from None
        return code, time.monotonic() - started

    def slow_queries(self):
        self.fake.set_faults(fault("graph", count=1, delay=SLOW_QUERY))

    def wait_for_queries(self, count):
        wait_for(lambda: len(self.fake.requests("graph")) >= count,
                 "%d hunting requests" % count)


class RunOnceTest(RunnerTest):

    def test_second_run_lists_new_and_gone(self):
        self.write_rule("zoho")
        first = self.run_once(now=T0)
        self.assertIn("baseline of 3 devices", first.stderr)
        self.assertTrue(self.json_of("diff")["baseline"])

        lost = self.rows[0]
        gained = device_rows(2, seed=12)
        self.set_rows(self.rows[1:] + gained)
        second = self.run_once(now=T0_PLUS_1H)
        self.assertIn("2 new, 1 gone", second.stderr)

        diff = self.json_of("diff")
        self.assertEqual(diff["format"], "mdhunt.diff/1")
        self.assertFalse(diff["baseline"])
        self.assertEqual(sorted(r["DeviceId"] for r in diff["new"]),
                         sorted(row[0] for row in gained))
        self.assertEqual([r["DeviceId"] for r in diff["gone"]], [lost[0]])
        self.assertEqual(diff["unchanged"], 2)

    def test_diff_table_and_csv_show_events(self):
        self.write_rule("zoho")
        self.run_once(now=T0)
        lost = self.rows[0]
        self.set_rows(self.rows[1:] + device_rows(1, seed=13))
        self.run_once(now=T0_PLUS_1H)

        table = self.mdhunt("diff", "--rule", "zoho")
        self.assertEqual(table.code, 0, table.stderr)
        text = table.stdout.decode("utf-8")
        self.assertIn("not seen in the last 1 day", text)
        self.assertIn(lost[1], text)

        csv_result = self.mdhunt("diff", "--format", "csv")
        lines = csv_result.stdout.decode("utf-8").splitlines()
        self.assertTrue(lines[0].startswith("event,DeviceName,DeviceId"))
        self.assertEqual(sorted(line.split(",")[0] for line in lines[1:]),
                         ["gone", "new"])

    def test_diff_shows_name_after_nul(self):
        self.write_rule("zoho")
        self.run_once(now=T0)
        hidden = device_rows(1, seed=14)[0]
        hidden[1] = "nul\u0000hidden.contoso.local"
        self.set_rows(self.rows + [hidden])
        self.run_once(now=T0_PLUS_1H)

        table = self.mdhunt("diff", "--rule", "zoho")
        self.assertEqual(table.code, 0, table.stderr)
        self.assertIn(b"nul\\0hidden.contoso.local", table.stdout)

    def test_run_once_runs_only_due_rules(self):
        self.write_rule("hourly", frequency="1h")
        self.write_rule("daily", frequency="1d")
        self.run_once(now=T0)
        self.assertEqual(len(self.hunting_queries()), 2)

        self.fake.clear_requests()
        quiet = self.run_once(now=T0_PLUS_30M)
        self.assertIn("no rule is due", quiet.stderr)
        self.assertEqual(self.hunting_queries(), [])

        self.run_once(now=T0_PLUS_1H5M)
        queries = self.hunting_queries()
        self.assertEqual(len(queries), 1)
        self.assertIn("'hourly'", queries[0])

    def test_status_shows_next_due(self):
        self.write_rule("hourly", frequency="1h")
        self.run_once(now=T0)
        status = self.rule_status("hourly", now=T0_PLUS_30M)
        self.assertEqual(status["last_run"]["status"], "ok")
        self.assertEqual(status["last_run"]["rows"], 3)
        self.assertEqual(status["next_due"], "2025-03-01T01:00:00.0000000Z")
        self.assertEqual(status["consecutive_failures"], 0)

    def test_failed_run_changes_no_entity(self):
        self.write_rule("zoho")
        self.run_once(now=T0)
        before = self.json_of("devices")["devices"]
        self.assertEqual(len(before), 3)

        self.set_rows(device_rows(2, seed=14))
        self.config = self.write_config(secret_file=write_secret(
            self.tmp_path("expired"), EXPIRED_SECRET))
        failed = self.run_once("--rule", "zoho", now=T0_PLUS_1H, code=3)
        self.assertIn("run 2 failed", failed.stderr)
        self.assertIn("(auth, HTTP 401", failed.stderr)

        self.assertEqual(self.json_of("devices")["devices"], before)
        status = self.rule_status("zoho")
        self.assertEqual(status["last_run"]["status"], "failed")
        self.assertEqual(status["consecutive_failures"], 1)
        self.assertEqual(status["last_error"]["kind"], "auth")
        self.assertEqual(status["last_error"]["http_status"], 401)

    def test_some_rules_failing_exits_6(self):
        self.write_rule("good")
        self.write_rule("bad")
        self.fake.set_query_error("syntax", contains="'bad'")
        result = self.run_once(now=T0, code=6)
        self.assertIn("rule bad: run", result.stderr)
        self.assertEqual(self.rule_status("good")["last_run"]["status"], "ok")

    def test_broken_rule_file_skipped(self):
        self.write_rule("good")
        with open(os.path.join(self.rules_dir, "broken.yaml"), "w",
                  encoding="utf-8") as f:
            f.write("id: broken\nquery: [\n")
        result = self.run_once(now=T0, code=6)
        self.assertIn("broken.yaml", result.stderr)
        self.assertEqual(self.rule_status("good")["last_run"]["status"], "ok")

    def test_no_loadable_rule_exits_2(self):
        with open(os.path.join(self.rules_dir, "broken.yaml"), "w",
                  encoding="utf-8") as f:
            f.write("id: broken\nquery: [\n")
        result = self.run_once(now=T0, code=2)
        self.assertIn("broken.yaml", result.stderr)

    def test_unknown_rule_exits_2(self):
        self.write_rule("zoho")
        result = self.run_once("--rule", "nosuch", code=2)
        self.assertIn("nosuch", result.stderr)


class RunnerSignalTest(RunnerTest):

    def test_second_runner_exits_75(self):
        self.write_rule("zoho")
        self.slow_queries()
        first = self.start("run", "--once", now=T0)
        self.wait_for_queries(1)

        second = self.run_once(now=T0, code=75)
        self.assertIn(self.store + ".lock", second.stderr)

        code, _ = self.stop(first)
        self.assertEqual(code, 130, self.log_of(first))

    def test_sigterm_stops_daemon_in_slow_query(self):
        self.write_rule("zoho")
        self.slow_queries()
        daemon = self.start("run")
        self.wait_for_queries(1)

        code, seconds = self.stop(daemon)
        log = self.log_of(daemon)
        self.assertEqual(code, 0, log)
        self.assertLess(seconds, STOP_LIMIT)
        self.assertIn("runner stopped by SIGTERM", log)
        self.assert_no_secret(log)
        status = self.rule_status("zoho")
        self.assertEqual(status["last_run"]["status"], "interrupted")

    def test_sigkill_leaves_store_intact(self):
        self.write_rule("zoho")
        self.run_once(now=T0)
        gained = device_rows(2, seed=15)
        self.set_rows(self.rows + gained)
        self.slow_queries()
        victim = self.start("run", "--once", now=T0_PLUS_1H)
        self.wait_for_queries(2)
        victim.kill()
        victim.wait()

        db = sqlite3.connect("file:%s?mode=ro" % self.store, uri=True)
        try:
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchall(),
                             [("ok",)])
            statuses = [r[0] for r in db.execute(
                "SELECT status FROM run ORDER BY id")]
        finally:
            db.close()
        self.assertEqual(statuses, ["ok", "running"])

        # The killed run did not finish its slot: the next cycle repeats
        # it at once and reports what it would have.
        self.fake.set_faults()
        self.run_once(now=T0_PLUS_1H)
        new = self.json_of("diff")["new"]
        self.assertEqual(sorted(r["DeviceId"] for r in new),
                         sorted(row[0] for row in gained))
        self.assertEqual(self.rule_status("zoho")["last_run"]["id"], 3)


class DaemonTest(RunnerTest):

    def test_daemon_runs_on_schedule_and_stops(self):
        self.write_rule("fast", frequency="2s", period="1d")
        daemon = self.start("run")
        wait_for(lambda: "rule fast: run 2 ok" in self.log_of(daemon),
                 "the second run")

        code, _ = self.stop(daemon)
        log = self.log_of(daemon)
        self.assertEqual(code, 0, log)
        self.assertIn("runner started: mdhunt", log)
        self.assertIn("runner stopped by SIGTERM", log)

    def test_sighup_reloads_and_logs_changes(self):
        self.write_rule("kept")
        self.write_rule("dropped")
        daemon = self.start("run")
        self.wait_for_queries(2)

        self.write_rule("added")
        os.unlink(os.path.join(self.rules_dir, "dropped.yaml"))
        with open(os.path.join(self.rules_dir, "kept.yaml"), "a",
                  encoding="utf-8") as f:
            f.write("  | where DeviceName != ''\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in self.log_of(daemon), "the reload")
        # Only the added rule is due; the others keep their slots.
        self.wait_for_queries(3)
        log = self.log_of(daemon)
        self.assertIn("reload: rule added added", log)
        self.assertIn("reload: rule dropped removed", log)
        self.assertIn("reload: rule kept changed its query", log)

        with open(self.config, "a", encoding="utf-8") as f:
            f.write("\n[schedule]\nno_such_key = 1\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the previous configuration"
                 in self.log_of(daemon), "the failed reload")

        code, _ = self.stop(daemon)
        self.assertEqual(code, 0, self.log_of(daemon))
