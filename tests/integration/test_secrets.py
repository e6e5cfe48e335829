"""Check that secrets and access tokens never leave mdhunt.

Every command runs with recognisable secrets: the fake cloud's client
secrets, the SMTP password and the private key's passphrase all contain
"CANARY", and every access token the fake issues contains "TokenCanary".
A line from the middle of the PEM private key, the base64 forms an SMTP
login would carry, and a signed client assertion are looked for too.

Each test runs its scenarios, collects stdout and stderr of every run,
and checks them all at the end.  The runner tests also check every file
the store leaves (database, WAL, shared memory, budget, lock) and every
message the SMTP server received.  Runs with -v must show the redacted
trace lines, so that a trace that stopped logging cannot pass unseen.
"""

import base64
import os
import signal
import subprocess
import time

from harness import (EXPIRED_SECRET, NO_ROLES_CLIENT_ID, NO_ROLES_SECRET,
                     REPO, SECRET, SECRET_MARKER, TOKEN_MARKER,
                     FakeCloudTest, client_certificate, closed_port,
                     device_dataset, device_rows, mdhunt_bin, mdhunt_env,
                     run_mdhunt, write_config, write_secret)
from test_mail import SMTP_PASSWORD, SMTP_USER, SmtpServer

RULE_ID = "zoho"
PASSPHRASE = "key-CANARY-passphrase"
FORMATS = ("table", "json", "csv", "ndjson")
BACKENDS = ("graph", "defender")
T0 = "2025-03-01T00:00:00Z"
T1 = "2025-03-01T01:00:00Z"
T2 = "2025-03-01T02:00:00Z"
T3 = "2025-03-01T03:00:00Z"
# Seconds to wait for the daemon to finish a cycle, and to stop.
DAEMON_LIMIT = 20

RULE_TEXT = """id: %s
name: Zoho Assist file signatures
queryFrequency: 1h
queryPeriod: 1d
query: |
  DeviceFileCertificateInfo
  | where Signer has 'Zoho'
  | summarize FirstSeen=min(Timestamp), LastSeen=max(Timestamp),
      Report=make_set(ReportId), Count=count() by DeviceId, DeviceName
""" % RULE_ID

EXCLUSIONS_TEXT = """- id: lab-devices
  rule: %s
  DeviceName: {glob: "wks-lab-*"}
  reason: test devices, CHG-7
  owner: soc@contoso.com
  expires: 2025-06-30
""" % RULE_ID


def b64(text):
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class SecretsTest(FakeCloudTest):

    def setUp(self):
        super().setUp()
        self.fake.set_dataset(device_dataset(3, seed=41))
        self.rules_dir = self.tmp_path("rules")
        os.mkdir(self.rules_dir)
        self.rule_file = os.path.join(self.rules_dir, RULE_ID + ".yaml")
        with open(self.rule_file, "w", encoding="utf-8") as f:
            f.write(RULE_TEXT)
        self.exclusions = self.tmp_path("exclusions.yaml")
        with open(self.exclusions, "w", encoding="utf-8") as f:
            f.write(EXCLUSIONS_TEXT)
        self.store = self.tmp_path("mdhunt.db")
        self.secret_file = write_secret(self.tmp_path("secret"))
        self.password_file = write_secret(self.tmp_path("smtp-password"),
                                          SMTP_PASSWORD)
        self.passphrase_file = write_secret(self.tmp_path("passphrase"),
                                            PASSPHRASE)
        self.cert = client_certificate(self.tmp, passphrase=PASSPHRASE)
        self.fake.add_certificate(self.cert)
        with open(self.cert["key_file"], encoding="ascii") as f:
            self.key_line = f.read().splitlines()[5]
        self.smtp = SmtpServer(self.tmp)
        self.addCleanup(self.smtp.stop)
        self.outputs = []
        self.processes = []
        self.addCleanup(self.kill_processes)

    def forbidden(self):
        """Return (what, text) pairs that no output may contain."""
        return [
            ("a secret containing CANARY", SECRET_MARKER),
            ("the client secret", SECRET),
            ("an access token", TOKEN_MARKER),
            ("the SMTP password", SMTP_PASSWORD),
            ("the SMTP password in base64", b64(SMTP_PASSWORD)),
            ("the SMTP AUTH PLAIN response",
             b64("\0%s\0%s" % (SMTP_USER, SMTP_PASSWORD))),
            ("the key passphrase", PASSPHRASE),
            ("a line of the private key", self.key_line),
            ("a client assertion", "client_assertion=eyJ"),
        ]

    def config(self, name="mdhunt.ini", backend="graph", mail=True,
               secret_file=None, certificate=False, extra_auth="",
               extra=""):
        """Write a configuration for the fake, the rules and the store."""
        auth = {}
        if certificate:
            auth = {"certificate_file": self.cert["cert_file"],
                    "private_key_file": self.cert["key_file"],
                    "passphrase_file": self.passphrase_file}
        else:
            auth = {"secret_file": secret_file or self.secret_file}
        text = ("\n[rules]\npath = %s\n\n[store]\npath = %s\n\n"
                "[report]\nexclusions = %s\n"
                % (self.rules_dir, self.store, self.exclusions))
        if mail:
            text += ("\n[mail]\nsmtp_url = smtp://127.0.0.1:%d\n"
                     "username = %s\npassword_file = %s\nca_file = %s\n"
                     "from = mdhunt@contoso.com\nto = soc@contoso.com\n"
                     % (self.smtp.port, SMTP_USER, self.password_file,
                        self.smtp.ca_file))
        path = write_config(self.tmp_path(name), self.fake, backend,
                            extra=extra + text, **auth)
        if extra_auth:
            with open(path, encoding="utf-8") as f:
                content = f.read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(content.replace("[auth]\n",
                                        "[auth]\n" + extra_auth, 1))
        return path

    def mdhunt(self, config, *args, code=None, now=None, env=None):
        """Run mdhunt -c config ARGS and keep its output for the checks."""
        extra = dict(env or {})
        if now is not None:
            extra["MDHUNT_TEST_NOW"] = now
        result = run_mdhunt(["-c", config] + list(args), env=extra)
        label = " ".join(args)
        self.outputs.append(("stdout of " + label, result.stdout.decode(
            "utf-8", "replace")))
        self.outputs.append(("stderr of " + label, result.stderr))
        if code is not None:
            self.assertEqual(result.code, code, "%s: %s"
                             % (label, result.stderr))
        return result

    def assert_traced(self, result, *lines):
        """Check that a -v run logged the redacted trace lines."""
        for line in lines:
            self.assertIn(line, result.stderr)

    def assert_outputs_clean(self):
        self.assertGreater(len(self.outputs), 0)
        for where, text in self.outputs:
            for what, secret in self.forbidden():
                self.assertNotIn(secret, text,
                                 "%s appeared on %s" % (what, where))

    def assert_files_clean(self, paths):
        checked = 0
        for path in paths:
            if not os.path.exists(path):
                continue
            checked += 1
            with open(path, "rb") as f:
                data = f.read()
            for what, secret in self.forbidden():
                self.assertNotIn(secret.encode("utf-8"), data,
                                 "%s appeared in %s" % (what, path))
        self.assertGreater(checked, 0, "none of %s exists" % paths)

    def store_files(self):
        return [self.store + suffix for suffix in
                ("", "-wal", "-shm", "-journal", ".budget", ".lock")]

    def kill_processes(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


class OneShotSecretsTest(SecretsTest):

    def test_hunt_every_format_and_backend(self):
        for backend in BACKENDS:
            config = self.config("%s.ini" % backend, backend, mail=False)
            for fmt in FORMATS:
                self.mdhunt(config, "hunt", self.rule_file, "--format", fmt,
                            code=0)
            traced = self.mdhunt(config, "-v", "hunt", "-q", "DeviceInfo",
                                 code=0)
            self.assert_traced(traced, "Authorization: [redacted]",
                               "client_secret=[redacted]")
        self.assert_outputs_clean()

    def test_certificate_with_passphrase(self):
        for backend in BACKENDS:
            config = self.config("cert-%s.ini" % backend, backend,
                                 mail=False, certificate=True)
            traced = self.mdhunt(config, "-v", "hunt", self.rule_file,
                                 "--format", "json", code=0)
            self.assert_traced(traced, "Authorization: [redacted]",
                               "client_assertion=[redacted]")
            self.mdhunt(config, "auth", "check", code=0)

        wrong = write_secret(self.tmp_path("wrong-passphrase"),
                             "not-the-CANARY-passphrase")
        config = self.config("wrong.ini", mail=False, certificate=True)
        with open(config, encoding="utf-8") as f:
            text = f.read().replace(self.passphrase_file, wrong)
        with open(config, "w", encoding="utf-8") as f:
            f.write(text)
        failed = self.mdhunt(config, "hunt", "-q", "DeviceInfo", code=2)
        self.assertIn(self.cert["key_file"], failed.stderr)
        self.assert_outputs_clean()

    def test_rules_commands(self):
        config = self.config(mail=False)
        self.mdhunt(config, "-v", "rules", "validate", self.rules_dir,
                    code=0)
        self.mdhunt(config, "rules", "show", self.rule_file, code=0)
        self.mdhunt(config, "-v", "rules", "show", RULE_ID, code=0)
        self.assert_outputs_clean()

    def test_auth_errors(self):
        expired = write_secret(self.tmp_path("expired"), EXPIRED_SECRET)
        config = self.config("expired.ini", mail=False, secret_file=expired)
        failed = self.mdhunt(config, "-v", "hunt", "-q", "DeviceInfo",
                             code=3)
        self.assertIn("AADSTS7000222", failed.stderr)
        self.assert_traced(failed, "client_secret=[redacted]")
        self.mdhunt(config, "auth", "check", code=3)

        no_roles = write_secret(self.tmp_path("no-roles"), NO_ROLES_SECRET)
        config = self.config("no-roles.ini", mail=False,
                             secret_file=no_roles)
        with open(config, encoding="utf-8") as f:
            text = f.read().replace(self.fake.state["apps"][0]["client_id"],
                                    NO_ROLES_CLIENT_ID)
        with open(config, "w", encoding="utf-8") as f:
            f.write(text)
        self.mdhunt(config, "-v", "hunt", "-q", "DeviceInfo", code=3)
        self.mdhunt(config, "auth", "check", code=3)

        self.fake.set_faults({"endpoint": "graph", "status": 401,
                              "error": {"code": "InvalidAuthenticationToken",
                                        "message": "Access token has "
                                                   "expired."}})
        config = self.config("api-401.ini", mail=False)
        self.mdhunt(config, "-v", "hunt", "-q", "DeviceInfo", code=3)
        self.assert_outputs_clean()

    def test_config_errors(self):
        inline = ("client_secret = %s\n" % SECRET)
        config = self.config("inline-bad.ini", mail=False,
                             extra_auth=inline + "cloud = mars\n")
        self.mdhunt(config, "hunt", "-q", "DeviceInfo", code=2)

        config = self.config("inline-twice.ini", mail=False,
                             extra_auth=inline + inline)
        self.mdhunt(config, "hunt", "-q", "DeviceInfo", code=2)

        config = self.config("inline-control.ini", mail=False,
                             extra_auth="client_secret = %s\a\n" % SECRET)
        self.mdhunt(config, "hunt", "-q", "DeviceInfo", code=2)

        empty = self.tmp_path("empty-secret")
        write_secret(empty, "")
        config = self.config("empty.ini", mail=False, secret_file=empty)
        failed = self.mdhunt(config, "hunt", "-q", "DeviceInfo", code=2)
        self.assertIn(empty, failed.stderr)

        os.chmod(self.secret_file, 0o644)
        config = self.config("readable.ini", mail=False)
        warned = self.mdhunt(config, "hunt", "-q", "DeviceInfo", code=0)
        self.assertIn(self.secret_file, warned.stderr)

        config = self.config("env.ini", mail=False)
        with open(config, encoding="utf-8") as f:
            text = f.read().replace(
                "client_secret_file = %s\n" % self.secret_file, "")
        with open(config, "w", encoding="utf-8") as f:
            f.write(text)
        self.mdhunt(config, "-v", "hunt", "-q", "DeviceInfo", code=0,
                    env={"MDHUNT_CLIENT_SECRET": SECRET})
        self.mdhunt(config, "hunt", "-q", "DeviceInfo", code=3,
                    env={"MDHUNT_CLIENT_SECRET": EXPIRED_SECRET})

        config = self.config("smtp-url.ini", mail=False,
                             extra="\n[mail]\nsmtp_url = smtps://u:%s@"
                                   "127.0.0.1:1\nfrom = a@contoso.com\n"
                                   "to = b@contoso.com\n" % SMTP_PASSWORD)
        self.mdhunt(config, "hunt", "-q", "DeviceInfo", code=2)

        config = self.config("proxy.ini", mail=False,
                             extra="max_retries = 0\n"
                                   "proxy = http://u:%s@127.0.0.1:%d\n"
                                   % (SMTP_PASSWORD, closed_port()))
        self.mdhunt(config, "-v", "hunt", "-q", "DeviceInfo", code=5)
        self.assert_outputs_clean()


class RunnerSecretsTest(SecretsTest):

    def test_runner_store_and_mail_commands(self):
        self.smtp.start()
        config = self.config()
        rows = device_rows(3, seed=42)
        self.fake.set_dataset({"columns": device_dataset(0)["columns"],
                               "rows": rows})
        self.mdhunt(config, "run", "--once", code=0, now=T0)
        self.fake.set_dataset({"columns": device_dataset(0)["columns"],
                               "rows": rows[1:] + device_rows(2, seed=43)})
        traced = self.mdhunt(config, "-v", "run", "--once", code=0, now=T1)
        self.assert_traced(traced, "Authorization: [redacted]")

        expired = write_secret(self.tmp_path("expired"), EXPIRED_SECRET)
        failing = self.config("expired.ini", secret_file=expired)
        self.mdhunt(failing, "-v", "run", "--once", "--rule", RULE_ID,
                    code=3, now=T2)

        for fmt in ("table", "json", "csv"):
            self.mdhunt(config, "diff", "--format", fmt, code=0)
            self.mdhunt(config, "devices", "--format", fmt, code=0)
        for fmt in ("table", "json"):
            self.mdhunt(config, "status", "--format", fmt, code=0)
            self.mdhunt(config, "outbox", "--all", "--format", fmt, code=0)
        self.mdhunt(config, "outbox", "--show", "1", code=0)
        self.mdhunt(config, "-v", "outbox", "--retry", code=0, now=T2)
        self.mdhunt(config, "-v", "mail-test", code=0)
        self.mdhunt(config, "-v", "auth", "check", code=0)
        self.mdhunt(config, "exclusions", "check", code=0)
        self.mdhunt(config, "exclusions", "list", "--format", "json",
                    code=0)

        self.run_daemon(config)

        self.assertGreater(len(self.smtp.raw()), 0)
        self.assert_outputs_clean()
        self.assert_files_clean(self.store_files())
        for index, message in enumerate(self.smtp.raw()):
            for what, secret in self.forbidden():
                self.assertNotIn(secret.encode("utf-8"), message,
                                 "%s appeared in mail %d" % (what, index))

    def run_daemon(self, config):
        """Run the daemon until it sleeps after its first cycle, then stop
        it."""
        log_path = self.tmp_path("daemon.log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [mdhunt_bin(), "-c", config, "-v", "run"], cwd=REPO,
                env=mdhunt_env({"MDHUNT_TEST_NOW": T3}),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            self.processes.append(process)
            deadline = time.monotonic() + DAEMON_LIMIT
            while time.monotonic() < deadline:
                with open(log_path, encoding="utf-8",
                          errors="replace") as f:
                    if "sleeping until" in f.read():
                        break
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            process.wait(DAEMON_LIMIT)
        with open(log_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        self.assertIn("sleeping until", text)
        self.outputs.append(("the daemon's output", text))
