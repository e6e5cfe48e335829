"""Integration tests of reviewed exclusions.

They run the test build (MDHUNT_BIN, compiled with -DMDHUNT_TEST_CLOCK)
against the fake cloud with the shipped ZohoAssist rule.  One-cycle runs
move the clock between invocations with MDHUNT_TEST_NOW; the reload test
runs the daemon on the real clock.  Every wait is bounded.
"""

import datetime
import json
import os
import shutil
import signal
import subprocess
import time

from harness import (REPO, SECRET_MARKER, TOKEN_MARKER, FakeCloudTest,
                     device_dataset, device_rows, mdhunt_bin, mdhunt_env,
                     run_mdhunt, write_config, write_secret)
from test_mail import (SMTP_PASSWORD, SMTP_USER, SmtpServer, csv_of,
                       html_of, text_of)

ZOHO_RULE = os.path.join(REPO, "config", "rules",
                         "rmm-zohoassist-file-signature.yaml")
TRIAGE_RULE = os.path.join(REPO, "config", "rules",
                           "rmm-zohoassist-file-signature-triage.yaml")
ZOHO_ID = "ba1e02dc-2731-4f65-bdd3-b293e0490e9a"

T0 = "2025-03-01T00:00:00Z"
# The shipped rule runs daily.
T1 = "2025-03-02T00:00:00Z"
T2 = "2025-03-03T00:00:00Z"
T3 = "2025-03-04T00:00:00Z"

WAIT_LIMIT = 15
STOP_LIMIT = 5


def entry(entry_id, device_id, expires, rule=ZOHO_ID):
    return ("- id: %s\n"
            "  rule: %s\n"
            "  DeviceId: [%s]\n"
            "  reason: Vendor support laptop, approved in change CHG-1234\n"
            "  owner: soc-lead@example.org\n"
            "  expires: %s\n" % (entry_id, rule, device_id, expires))


def wait_for(condition, what, limit=WAIT_LIMIT):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out after %d s waiting for %s"
                         % (limit, what))


class ExclusionsTest(FakeCloudTest):

    def setUp(self):
        super().setUp()
        self.rows = device_rows(3, seed=21)
        self.set_rows(self.rows)
        self.rules_dir = self.tmp_path("rules")
        os.mkdir(self.rules_dir)
        shutil.copy(ZOHO_RULE, self.rules_dir)
        self.store = self.tmp_path("mdhunt.db")
        self.exclusions = self.tmp_path("exclusions.yaml")
        self.write_exclusions("")
        self.secret_file = write_secret(self.tmp_path("secret"))
        self.config = self.write_config()
        self.processes = []
        self.addCleanup(self.kill_processes)

    def write_config(self, mail=""):
        return write_config(
            self.tmp_path("mdhunt.ini"), self.fake, "graph",
            secret_file=self.secret_file,
            extra="\n[rules]\npath = %s\n\n[store]\npath = %s\n\n"
                  "[report]\nexclusions = %s\n%s"
                  % (self.rules_dir, self.store, self.exclusions, mail))

    def set_rows(self, rows):
        self.rows = rows
        self.fake.set_dataset({"columns": device_dataset(0)["columns"],
                               "rows": rows})

    def write_exclusions(self, text):
        with open(self.exclusions, "w", encoding="utf-8") as f:
            f.write(text)

    def mdhunt(self, *args, now=None):
        env = {"MDHUNT_TEST_NOW": now} if now is not None else None
        result = run_mdhunt(["-c", self.config] + list(args), env=env)
        for text in (result.stdout.decode("utf-8", "replace"),
                     result.stderr):
            self.assertNotIn(SECRET_MARKER, text)
            self.assertNotIn(TOKEN_MARKER, text)
        return result

    def run_once(self, now, code=0):
        result = self.mdhunt("run", "--once", now=now)
        self.assertEqual(result.code, code, result.stderr)
        return result

    def diff_json(self, now=None):
        result = self.mdhunt("diff", "--format", "json", now=now)
        self.assertEqual(result.code, 0, result.stderr)
        return json.loads(result.stdout)

    def kill_processes(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def two_new_devices(self):
        """Run a baseline at T0, then make two new devices appear."""
        self.run_once(T0)
        gained = device_rows(2, seed=22)
        self.set_rows(self.rows + gained)
        return gained


class ExcludedRunTest(ExclusionsTest):

    def test_excluded_device_not_new(self):
        kept, excluded = self.two_new_devices()
        self.write_exclusions(entry("vendor-support-laptop", excluded[0],
                                    "2025-03-10"))
        second = self.run_once(T1)
        self.assertIn("1 new", second.stderr)
        self.assertIn("1 excluded", second.stderr)

        diff = self.diff_json()
        self.assertEqual([r["DeviceId"] for r in diff["new"]], [kept[0]])
        self.assertEqual(len(diff["excluded"]), 1)
        row = diff["excluded"][0]
        self.assertEqual(row["DeviceId"], excluded[0])
        self.assertEqual(row["mdhunt_exclusion"]["id"],
                         "vendor-support-laptop")
        self.assertEqual(row["mdhunt_exclusion"]["reason"],
                         "Vendor support laptop, approved in change "
                         "CHG-1234")
        self.assertEqual(row["mdhunt_exclusion"]["owner"],
                         "soc-lead@example.org")
        self.assertTrue(row["mdhunt_first_excluded"])
        self.assertEqual(diff["uncovered"], [])
        self.assertEqual(len(diff["run"]["exclusions_hash"]), 64)

    def test_expired_entry_uncovers_device_once(self):
        _, excluded = self.two_new_devices()
        self.write_exclusions(entry("vendor-support-laptop", excluded[0],
                                    "2025-03-02"))
        self.run_once(T1)
        self.assertEqual(len(self.diff_json()["excluded"]), 1)

        third = self.run_once(T2)
        self.assertIn("1 uncovered", third.stderr)
        diff = self.diff_json()
        self.assertEqual(diff["excluded"], [])
        self.assertEqual(diff["new"], [])
        self.assertEqual([r["DeviceId"] for r in diff["uncovered"]],
                         [excluded[0]])
        self.assertEqual(diff["uncovered"][0]["mdhunt_exclusion"]["id"],
                         "vendor-support-laptop")

        self.run_once(T3)
        diff = self.diff_json()
        self.assertEqual(diff["uncovered"], [])
        self.assertEqual(diff["new"], [])

    def test_diff_table_and_csv_sections(self):
        _, excluded = self.two_new_devices()
        self.write_exclusions(entry("vendor-support-laptop", excluded[0],
                                    "2025-03-10"))
        self.run_once(T1)

        table = self.mdhunt("diff")
        self.assertEqual(table.code, 0, table.stderr)
        text = table.stdout.decode("utf-8")
        self.assertIn("excluded (1):", text)
        self.assertIn("vendor-support-laptop", text)
        self.assertIn("soc-lead@example.org", text)

        csv_result = self.mdhunt("diff", "--format", "csv")
        lines = csv_result.stdout.decode("utf-8").splitlines()
        header = lines[0].split(",")
        self.assertEqual(header[:3], ["event", "DeviceName", "DeviceId"])
        self.assertIn("exclusion", header)
        rows = [line for line in lines[1:]
                if line.startswith("excluded,")]
        self.assertEqual(len(rows), 1)
        self.assertIn(excluded[0], rows[0])
        self.assertIn("vendor-support-laptop", rows[0])

    def test_entry_for_missing_column_reported(self):
        self.run_once(T0)
        self.write_exclusions(
            "- id: by-signer\n  rule: %s\n  Signers: Zoho Corporation\n"
            "  reason: r\n  owner: o\n  expires: 2025-03-10\n" % ZOHO_ID)
        second = self.run_once(T1)
        self.assertIn("exclusion by-signer names column Signers",
                      second.stderr)
        issues = self.diff_json()["exclusion_issues"]
        self.assertEqual([i["entry"] for i in issues], ["by-signer"])
        self.assertIn("exclusions.yaml:3:", issues[0]["message"])


class ExclusionsFileTest(ExclusionsTest):

    def test_invalid_file_stops_runner(self):
        self.write_exclusions("- id: no-owner\n  rule: %s\n"
                              "  DeviceId: [abc]\n  reason: r\n"
                              "  expires: 2025-03-10\n" % ZOHO_ID)
        result = self.run_once(T0, code=2)
        self.assertIn(self.exclusions + ":1: entry no-owner has no 'owner'",
                      result.stderr)
        self.assertEqual(self.fake.requests("graph"), [])

    def test_check_reports_file_and_line(self):
        self.write_exclusions(entry("ok", "abc", "2025-03-10")
                              + entry("too-far", "def", "2027-01-01")
                              + entry("unknown", "ghi", "2025-03-10",
                                      rule="no-such-rule"))
        result = self.mdhunt("exclusions", "check", now=T0)
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn(self.exclusions + ":12: expires 2027-01-01",
                      result.stderr)
        self.assertIn(self.exclusions + ":14: entry unknown names rule "
                      "no-such-rule", result.stderr)

    def test_check_accepts_valid_file(self):
        self.write_exclusions(entry("ok", "abc", "2025-03-10"))
        result = self.mdhunt("exclusions", "check", now=T0)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("valid, 1 entry", result.stdout.decode("utf-8"))

    def test_list_counts_and_orders_by_expiry(self):
        _, excluded = self.two_new_devices()
        self.write_exclusions(entry("later", "abc", "2025-03-20")
                              + entry("sooner", excluded[0], "2025-03-10"))
        self.run_once(T1)
        result = self.mdhunt("exclusions", "list", "--format", "json",
                             now=T1)
        self.assertEqual(result.code, 0, result.stderr)
        entries = json.loads(result.stdout)["entries"]
        self.assertEqual([e["id"] for e in entries], ["sooner", "later"])
        self.assertEqual(entries[0]["devices"], 1)
        self.assertEqual(entries[0]["matched"][0]["rule"], ZOHO_ID)
        self.assertEqual(entries[1]["devices"], 0)
        self.assertFalse(entries[0]["expired"])

    def test_triage_rule_validates(self):
        result = self.mdhunt("rules", "validate", TRIAGE_RULE)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("db37ca56-2d55-4f3d-b40d-83f7cf180476",
                      result.stdout.decode("utf-8"))


class ExclusionsReloadTest(ExclusionsTest):

    def start_daemon(self):
        log_path = self.tmp_path("daemon.log")
        log = open(log_path, "wb")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [mdhunt_bin(), "-c", self.config, "run"], cwd=REPO,
            env=mdhunt_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log)
        process.log_path = log_path
        self.processes.append(process)
        return process

    def log_of(self, process):
        with open(process.log_path, encoding="utf-8",
                  errors="replace") as f:
            return f.read()

    def test_reload_with_broken_file_keeps_previous(self):
        # The daemon uses the real clock, so the expiry is near today.
        expires = (datetime.datetime.now(datetime.timezone.utc)
                   + datetime.timedelta(days=30)).strftime("%Y-%m-%d")
        self.write_exclusions(entry("kept", self.rows[0][0], expires))
        daemon = self.start_daemon()
        wait_for(lambda: "run 1 ok" in self.log_of(daemon), "the first run")
        self.assertIn("exclusions: 1 entry from", self.log_of(daemon))

        self.write_exclusions("- id: broken\n  rule: [\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the previous configuration, rules and "
                 "exclusions" in self.log_of(daemon), "the failed reload")
        self.assertIn(self.exclusions + ":", self.log_of(daemon))

        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(STOP_LIMIT)
        except subprocess.TimeoutExpired:
            raise AssertionError("mdhunt did not stop within %d s"
                                 % STOP_LIMIT) from None
        self.assertEqual(code, 0, self.log_of(daemon))
        self.assertNotIn(SECRET_MARKER, self.log_of(daemon))


class ExclusionsMailTest(ExclusionsTest):

    def setUp(self):
        super().setUp()
        self.smtp = SmtpServer(self.tmp)
        self.addCleanup(self.smtp.stop)
        password_file = write_secret(self.tmp_path("smtp-password"),
                                     SMTP_PASSWORD)
        self.config = self.write_config(
            "\n[mail]\nsmtp_url = smtp://127.0.0.1:%d\nusername = %s\n"
            "password_file = %s\nca_file = %s\nfrom = mdhunt@example.com\n"
            "to = soc@example.com\n"
            % (self.smtp.port, SMTP_USER, password_file, self.smtp.ca_file))

    def test_mail_lists_excluded_then_uncovered_once(self):
        self.smtp.start()
        kept, excluded = self.two_new_devices()
        self.write_exclusions(entry("vendor-support-laptop", excluded[0],
                                    "2025-03-02"))
        self.run_once(T1)
        messages = self.smtp.messages()
        self.assertEqual(len(messages), 2)
        mail = messages[1]
        self.assertTrue(mail["Subject"].startswith("[mdhunt] 1 new device "))
        text = text_of(mail).replace("\r\n", "\n")
        self.assertIn("New devices: 1,", text)
        self.assertIn(kept[1], text)
        self.assertIn("Excluded by vendor-support-laptop: 1 device (reason: "
                      "Vendor support laptop, approved in change CHG-1234; "
                      "owner: soc-lead@example.org; expires 2025-03-02)",
                      text)
        self.assertIn("Excluded for the first time: 1 device\n- %s (%s)"
                      % (excluded[1], excluded[0]), text)
        self.assertIn("Excluded for the first time", html_of(mail))
        self.assertIn(excluded[0], html_of(mail))
        excluded_rows = [line for line in csv_of(mail).splitlines()
                         if line.startswith("excluded,")]
        self.assertEqual(len(excluded_rows), 1)
        self.assertIn("vendor-support-laptop", excluded_rows[0])

        # The entry ends with 2025-03-02: the next daily run uncovers the
        # device, and mails it once.
        self.run_once(T2)
        messages = self.smtp.messages()
        self.assertEqual(len(messages), 3)
        text = text_of(messages[2]).replace("\r\n", "\n")
        self.assertIn("No longer excluded (uncovered), review as new: 1 "
                      "device\n- %s (%s)" % (excluded[1], excluded[0]), text)
        self.assertIn("no longer excluded", messages[2]["Subject"])
        uncovered_rows = [line for line in csv_of(messages[2]).splitlines()
                          if line.startswith("uncovered,")]
        self.assertEqual(len(uncovered_rows), 1)

        self.run_once(T3)
        self.assertEqual(self.diff_json()["uncovered"], [])
        mentions = [m for m in self.smtp.messages()
                    if "No longer excluded" in text_of(m)]
        self.assertEqual(len(mentions), 1)
