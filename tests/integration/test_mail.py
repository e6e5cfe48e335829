"""Integration tests of the mail digests against a real SMTP server.

The server is tests/smtp/smtpserver.py (aiosmtpd) on loopback with
STARTTLS and AUTH required; mdhunt trusts its throwaway CA through
[mail] ca_file.  The runs are `run --once` of the test build against the
fake cloud, with the clock moved between invocations by MDHUNT_TEST_NOW.
Received messages are parsed with Python's email package.
"""

import email
import email.policy
import json
import os
import signal
import sqlite3
import subprocess
import time

from harness import (EXPIRED_SECRET, PYTHON, REPO, SECRET_MARKER,
                     TENANT_ID, TOKEN_MARKER, FakeCloudTest,
                     closed_port, device_dataset, device_rows, mdhunt_bin,
                     mdhunt_env, run_mdhunt, write_config, write_secret)

SMTP_SCRIPT = os.path.join(REPO, "tests", "smtp", "smtpserver.py")
SMTP_USER = "mdhunt-smtp"
SMTP_PASSWORD = "smtp-CANARY-pw"

T0 = "2025-03-01T00:00:00Z"
T1 = "2025-03-01T01:00:00Z"
T2 = "2025-03-01T02:00:00Z"
T3 = "2025-03-01T03:00:00Z"
T4 = "2025-03-01T04:00:00Z"

# Seconds to wait for a server or a process to reach a state.
WAIT_LIMIT = 20
# The line length RFC 5322 recommends, without CRLF; mdhunt folds and
# encodes within it (the hard SMTP limit is 998).
FOLD_LIMIT = 78

PORTAL = "https://security.microsoft.com/machines/v2/"

HOSTILE_NAMES = [
    "<script>alert(1)</script>",
    "=cmd|' /C calc'!A0",
    "quote\"d 'name'",
    "comma,separated,name",
    "rtl-\u202egnp.exe",
    "long-" + "x" * 3000,
]


def wait_for(condition, what, limit=WAIT_LIMIT):
    """Poll condition() until it is true; fail after limit seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out after %d s waiting for %s"
                         % (limit, what))


def rule_text(rule_id, frequency="1h", period="1d"):
    return ("id: %s\n"
            "name: Test rule %s\n"
            "severity: High\n"
            "queryFrequency: %s\n"
            "queryPeriod: %s\n"
            "tactics:\n"
            "  - CommandAndControl\n"
            "relevantTechniques:\n"
            "  - T1219\n"
            "query: |\n"
            "  DeviceFileCertificateInfo\n"
            "  | where Signer has '%s'\n"
            "  | summarize FirstSeen=min(Timestamp), LastSeen=max(Timestamp),"
            " Report=make_set(ReportId), Count=count() by DeviceId,"
            " DeviceName\n" % (rule_id, rule_id, frequency, period, rule_id))


class SmtpServer:
    """One tests/smtp/smtpserver.py process and the messages it saved."""

    def __init__(self, directory):
        self.directory = directory
        self.save_dir = os.path.join(directory, "received")
        self.ca_file = os.path.join(directory, "smtp-ca.pem")
        self.port_file = os.path.join(directory, "smtp-port")
        self.port = closed_port()
        self.process = None
        self.log = None

    def start(self, *options):
        """Start on self.port with STARTTLS and AUTH plus options."""
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        self.log = open(os.path.join(self.directory, "smtp.log"), "ab")
        self.process = subprocess.Popen(
            [PYTHON, SMTP_SCRIPT, "--port", str(self.port),
             "--port-file", self.port_file, "--ca-file", self.ca_file,
             "--save-dir", self.save_dir, "--user", SMTP_USER,
             "--password", SMTP_PASSWORD, "--lifetime", "300"]
            + list(options),
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        wait_for(lambda: os.path.exists(self.port_file)
                 or self.process.poll() is not None, "the SMTP server")
        if self.process.poll() is not None:
            raise AssertionError("the SMTP server exited with status %d"
                                 % self.process.returncode)
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def names(self):
        if not os.path.isdir(self.save_dir):
            return []
        return sorted(n[:-4] for n in os.listdir(self.save_dir)
                      if n.endswith(".eml"))

    def raw(self):
        """The bytes of every saved message, oldest first."""
        result = []
        for name in self.names():
            with open(os.path.join(self.save_dir, name + ".eml"), "rb") as f:
                result.append(f.read())
        return result

    def envelopes(self):
        result = []
        for name in self.names():
            with open(os.path.join(self.save_dir, name + ".json"),
                      encoding="utf-8") as f:
                result.append(json.load(f))
        return result

    def messages(self):
        return [email.message_from_bytes(raw, policy=email.policy.default)
                for raw in self.raw()]


def part_types(message):
    return [part.get_content_type() for part in message.walk()]


def html_of(message):
    return message.get_body(("html",)).get_content()


def text_of(message):
    return message.get_body(("plain",)).get_content()


def csv_of(message):
    for part in message.iter_attachments():
        if part.get_content_type() == "text/csv":
            return part.get_content()
    raise AssertionError("the message has no text/csv attachment")


class MailTest(FakeCloudTest):

    def setUp(self):
        super().setUp()
        self.rows = device_rows(3, seed=21)
        self.set_rows(self.rows)
        self.rules_dir = self.tmp_path("rules")
        os.mkdir(self.rules_dir)
        with open(os.path.join(self.rules_dir, "zoho.yaml"), "w",
                  encoding="utf-8") as f:
            f.write(rule_text("zoho"))
        self.store = self.tmp_path("mdhunt.db")
        self.secret_file = write_secret(self.tmp_path("secret"))
        self.password_file = write_secret(self.tmp_path("smtp-password"),
                                          SMTP_PASSWORD)
        self.smtp = SmtpServer(self.tmp)
        self.addCleanup(self.smtp.stop)
        self.processes = []
        self.addCleanup(self.kill_processes)
        self.config = self.write_config()

    def write_config(self, secret_file=None, send_when="new",
                     digest_every="1h"):
        mail = ("\n[mail]\n"
                "smtp_url = smtp://127.0.0.1:%d\n"
                "username = %s\n"
                "password_file = %s\n"
                "ca_file = %s\n"
                "from = mdhunt@example.com\n"
                "to = soc@example.com\n"
                "cc = it@example.com\n"
                "subject_prefix = [hunt]\n"
                "send_when = %s\n"
                "digest_every = %s\n"
                % (self.smtp.port, SMTP_USER, self.password_file,
                   self.smtp.ca_file, send_when, digest_every))
        return write_config(
            self.tmp_path("mdhunt.ini"), self.fake, "graph",
            secret_file=secret_file or self.secret_file,
            extra="\n[rules]\npath = %s\n\n[store]\npath = %s\n%s"
                  % (self.rules_dir, self.store, mail))

    def set_rows(self, rows):
        self.rows = rows
        self.fake.set_dataset({"columns": device_dataset(0)["columns"],
                               "rows": rows})

    def mdhunt(self, *args, now=None):
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

    def outbox(self, *args):
        result = self.mdhunt("outbox", "--format", "json", *args)
        self.assertEqual(result.code, 0, result.stderr)
        return json.loads(result.stdout)["digests"]

    def start(self, *args, now=None):
        env = {"MDHUNT_TEST_NOW": now} if now is not None else {}
        log_path = self.tmp_path("stderr-%d.log" % len(self.processes))
        log = open(log_path, "wb")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [mdhunt_bin(), "-c", self.config] + list(args), cwd=REPO,
            env=mdhunt_env(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log)
        self.processes.append(process)
        return process

    def kill_processes(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def baseline_then_two_new(self):
        """Run a baseline, then a run that gains two devices and loses
        one; return the two gained rows."""
        self.run_once(now=T0)
        gained = device_rows(2, seed=22)
        self.set_rows(self.rows[1:] + gained)
        self.run_once(now=T1)
        return gained


class DigestMessageTest(MailTest):

    def test_digest_parses_as_mime(self):
        self.smtp.start()
        self.baseline_then_two_new()

        messages = self.smtp.messages()
        self.assertEqual(len(messages), 2)
        message = messages[1]
        self.assertEqual(part_types(message),
                         ["multipart/mixed", "multipart/alternative",
                          "text/plain", "text/html", "text/csv"])
        encodings = [part["Content-Transfer-Encoding"]
                     for part in message.walk()
                     if not part.is_multipart()]
        self.assertEqual(encodings, ["quoted-printable", "quoted-printable",
                                     "base64"])
        self.assertEqual(message["From"], "mdhunt@example.com")
        self.assertEqual(message["To"], "soc@example.com")
        self.assertEqual(message["Cc"], "it@example.com")
        self.assertEqual(message["Date"].datetime.isoformat(),
                         "2025-03-01T01:00:00+00:00")
        self.assertTrue(message["Subject"].startswith("[hunt] 2 new devices"))
        self.assertIn(TENANT_ID, message["Subject"])

    def test_lines_stay_within_smtp_limit(self):
        self.smtp.start()
        self.baseline_then_two_new()

        for raw in self.smtp.raw():
            lines = raw.split(b"\r\n")
            self.assertLessEqual(max(len(line) for line in lines),
                                 FOLD_LIMIT)
            self.assertNotIn(b"\n", b"".join(lines))

    def test_delivery_uses_starttls_and_auth(self):
        self.smtp.start()
        self.run_once(now=T0)

        envelope = self.smtp.envelopes()[0]
        self.assertTrue(envelope["tls"])
        self.assertEqual(envelope["auth"], SMTP_USER)
        self.assertEqual(envelope["mail_from"], "mdhunt@example.com")
        self.assertEqual(sorted(envelope["rcpt_tos"]),
                         ["it@example.com", "soc@example.com"])

    def test_html_links_new_devices(self):
        self.smtp.start()
        gained = self.baseline_then_two_new()

        html = html_of(self.smtp.messages()[1])
        for row in gained:
            url = "%s%s/overview?tid=%s" % (PORTAL, row[0], TENANT_ID)
            self.assertIn('href="%s"' % url, html)
            self.assertIn(row[1], html)
        self.assertNotIn(self.rows[0][0] + "/overview", html)

    def test_csv_lists_new_devices(self):
        self.smtp.start()
        gained = self.baseline_then_two_new()

        csv_text = csv_of(self.smtp.messages()[1])
        for row in gained:
            self.assertIn(row[0], csv_text)

    def test_message_id_matches_outbox(self):
        self.smtp.start()
        self.baseline_then_two_new()

        digests = self.outbox()
        received = [m["Message-ID"] for m in self.smtp.messages()]
        self.assertEqual([d["message_id"] for d in digests], received)
        self.assertEqual([d["state"] for d in digests], ["sent", "sent"])

    def test_show_prints_stored_bytes(self):
        self.smtp.start()
        self.run_once(now=T0)

        shown = self.mdhunt("outbox", "--show", "1")
        self.assertEqual(shown.code, 0, shown.stderr)
        self.assertEqual(shown.stdout, self.smtp.raw()[0])

    def test_quiet_run_sends_nothing(self):
        self.smtp.start()
        self.run_once(now=T0)
        self.run_once(now=T1)

        self.assertEqual(len(self.smtp.raw()), 1)
        states = [d["state"] for d in self.outbox("--all")]
        self.assertEqual(states, ["sent", "skipped"])

    def test_mail_test_command(self):
        self.smtp.start()
        result = self.mdhunt("mail-test")

        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn(b"accepted the test message for 2 recipients",
                      result.stdout)
        self.assertIn("test message", self.smtp.messages()[0]["Subject"])


class HostileNameTest(MailTest):

    def setUp(self):
        super().setUp()
        self.smtp.start()
        self.run_once(now=T0)
        self.hostile = device_rows(len(HOSTILE_NAMES), seed=23,
                                   names=HOSTILE_NAMES)
        self.set_rows(self.rows + self.hostile)
        self.run_once(now=T1)
        self.message = self.smtp.messages()[1]

    def test_html_escapes_markup(self):
        html = html_of(self.message)
        self.assertNotIn("<script>", html)
        self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt;", html)
        self.assertIn("quote&quot;d &#39;name&#39;", html)

    def test_html_has_no_remote_content(self):
        html = html_of(self.message).lower()
        self.assertNotIn("<img", html)
        self.assertNotIn("<script", html)
        self.assertNotIn("<link", html)

    def test_csv_neutralises_formula(self):
        csv_text = csv_of(self.message)
        self.assertIn("'=cmd|' /C calc'!A0", csv_text)
        self.assertNotIn(",=cmd", csv_text)
        self.assertIn('"comma,separated,name"', csv_text)

    def test_csv_keeps_long_name_whole(self):
        self.assertIn(HOSTILE_NAMES[-1], csv_of(self.message))

    def test_text_shows_bidi_mark(self):
        text = text_of(self.message)
        self.assertNotIn("\u202e", text)
        self.assertIn("rtl-<U+202E>gnp.exe", text)

    def test_long_name_keeps_lines_short(self):
        raw = self.smtp.raw()[1]
        self.assertLessEqual(max(len(line) for line in raw.split(b"\r\n")),
                             FOLD_LIMIT)

    def test_body_shortens_long_name(self):
        self.assertNotIn(HOSTILE_NAMES[-1], text_of(self.message))
        self.assertNotIn(HOSTILE_NAMES[-1], html_of(self.message))


class DeliveryTest(MailTest):

    def test_server_down_delivers_once_later(self):
        # Start and stop the server once so that its CA file exists:
        # without it the client fails on ca_file before it connects.
        self.smtp.start()
        self.smtp.stop()
        down = self.run_once(now=T0)
        self.assertIn("stays queued", down.stderr)
        self.assertEqual(self.smtp.raw(), [])
        queued = self.outbox()
        self.assertEqual(queued[0]["state"], "pending")
        self.assertEqual(queued[0]["attempts"], 1)

        self.smtp.start()
        self.run_once(now=T1)
        self.run_once(now=T2)

        raw = self.smtp.raw()
        self.assertEqual(len(raw), 1)
        self.assertEqual(self.smtp.messages()[0]["Message-ID"],
                         queued[0]["message_id"])
        self.assertEqual(self.outbox()[0]["state"], "sent")

    def test_retry_waits_for_backoff(self):
        self.smtp.start()
        self.smtp.stop()
        self.run_once(now=T0)
        self.smtp.start()

        self.run_once(now="2025-03-01T00:00:30Z")
        self.assertEqual(self.smtp.raw(), [])
        self.run_once(now="2025-03-01T00:01:00Z")
        self.assertEqual(len(self.smtp.raw()), 1)

    def test_kill_during_send_resends_same_message(self):
        self.smtp.start("--delay-data", "30", "--delay-count", "1")
        victim = self.start("run", "--once", now=T0)
        wait_for(lambda: len(self.smtp.raw()) == 1, "the first message")
        victim.kill()
        victim.wait()
        self.assertEqual(self.outbox()[0]["state"], "pending")

        self.run_once(now=T1)
        raw = self.smtp.raw()
        self.assertEqual(len(raw), 2)
        self.assertEqual(raw[0], raw[1])
        self.assertEqual(self.outbox()[0]["state"], "sent")

    def test_starttls_refused_sends_nothing(self):
        self.smtp.start("--tls", "reject")
        result = self.run_once(now=T0)

        self.assertEqual(self.smtp.raw(), [])
        self.assertIn("STARTTLS", result.stderr)
        digest = self.outbox()[0]
        self.assertEqual(digest["state"], "pending")
        self.assertTrue(digest["last_error"].startswith("tls: "))

    def test_5xx_makes_dead_letter(self):
        self.smtp.start("--fail-data", "554 5.6.0 rejected")
        self.run_once(now=T0)

        digest = self.outbox()[0]
        self.assertEqual(digest["state"], "dead")
        self.assertIn("554", digest["last_error"])
        table = self.mdhunt("outbox")
        self.assertIn(b"dead", table.stdout)
        status = self.mdhunt("status", "--format", "json")
        self.assertEqual(json.loads(status.stdout)["mail"]["dead"], [1])
        status_table = self.mdhunt("status")
        self.assertIn(b"dead letter", status_table.stdout)

    def test_retry_command_delivers_dead_letter(self):
        self.smtp.start("--fail-data", "554 5.6.0 rejected")
        self.run_once(now=T0)
        self.smtp.stop()
        self.smtp.start()

        retried = self.mdhunt("outbox", "--retry")
        self.assertEqual(retried.code, 0, retried.stderr)
        self.assertIn(b"digest 1: delivered", retried.stdout)
        self.assertEqual(len(self.smtp.raw()), 1)
        self.assertEqual(self.outbox()[0]["state"], "sent")

    def test_rejected_recipient_still_sent(self):
        self.smtp.start("--reject-rcpt", "it@example.com")
        result = self.run_once(now=T0)

        self.assertIn("rejected recipient it@example.com", result.stderr)
        self.assertEqual(self.smtp.envelopes()[0]["rcpt_tos"],
                         ["soc@example.com"])
        self.assertEqual(self.outbox()[0]["state"], "sent")

    def test_daemon_mails_after_cycle(self):
        self.config = self.write_config(digest_every="0s")
        self.smtp.start()
        daemon = self.start("run")
        wait_for(lambda: len(self.smtp.raw()) == 1, "the daemon's digest")

        daemon.send_signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(WAIT_LIMIT), 0)
        self.assertEqual(self.outbox()[0]["state"], "sent")

    def test_wrong_password_keeps_digest_queued(self):
        self.password_file = write_secret(self.tmp_path("bad-password"),
                                          "wrong-password")
        self.config = self.write_config()
        self.smtp.start()
        result = self.run_once(now=T0)

        self.assertIn("rejected the login", result.stderr)
        self.assertNotIn("wrong-password", result.stderr)
        self.assertEqual(self.outbox()[0]["state"], "pending")


class HealthOverrideTest(MailTest):

    def test_auth_failures_send_health_mail(self):
        self.smtp.start()
        self.run_once(now=T0)
        self.assertEqual(len(self.smtp.raw()), 1)

        self.config = self.write_config(secret_file=write_secret(
            self.tmp_path("expired"), EXPIRED_SECRET))
        self.run_once("--all", now="2025-03-01T00:10:00Z", code=6)
        self.run_once("--all", now="2025-03-01T00:20:00Z", code=6)
        self.assertEqual(len(self.smtp.raw()), 1)
        self.run_once("--all", now="2025-03-01T00:30:00Z", code=6)

        messages = self.smtp.messages()
        self.assertEqual(len(messages), 2)
        self.assertIn("1 failing rule", messages[1]["Subject"])
        text = text_of(messages[1])
        self.assertIn("3 failures in a row", text)
        self.assertIn("Last error (auth)", text)
        self.assertEqual(self.outbox()[1]["reason"], "failing")

    def test_stale_rule_sends_health_mail(self):
        self.smtp.start()
        self.run_once(now=T0)
        self.config = self.write_config(secret_file=write_secret(
            self.tmp_path("expired"), EXPIRED_SECRET))
        self.run_once(now=T1, code=6)
        self.assertEqual(len(self.smtp.raw()), 1)

        self.run_once(now="2025-03-01T02:00:01Z", code=6)
        self.assertEqual(len(self.smtp.raw()), 2)
        self.assertEqual(self.outbox()[1]["reason"], "stale")


class StoreStateTest(MailTest):

    def test_items_belong_to_one_digest(self):
        self.smtp.start()
        self.baseline_then_two_new()

        db = sqlite3.connect("file:%s?mode=ro" % self.store, uri=True)
        try:
            rows = db.execute("SELECT id, digest_id, state FROM outbox"
                              " ORDER BY id").fetchall()
        finally:
            db.close()
        self.assertEqual(rows, [(1, 1, "sent"), (2, 2, "sent")])
