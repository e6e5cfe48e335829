"""The hostile-input catalogue of tests/bad-input/, run against mdhunt.

Every *.json file of tests/bad-input/ lists cases; tests/bad-input/README.md
describes the fields.  Each case becomes one test method,
test_<kind>_<name>, which writes or serves the case's input, runs the
command, and checks the exit status, the stderr pattern and that stdout
stays empty on failure.

Before each case the store is reset to a copy made after two successful
runs (so entities, run rows, diff events and the outbox are not empty).
Afterwards every table must be unchanged, apart from the one failed run
that a `run --once` case adds, and PRAGMA integrity_check must report ok.

Replies come from the fake cloud's faults.  A reply that is not valid
UTF-8 cannot go through the fake's state file, so cases with "via": "raw"
are served by RawServer below, which sends the bytes as they are.  SMTP
dialogues come from ScriptedSmtp, which plays a healthy server unless the
case replaces one of its replies.
"""

import binascii
import json
import os
import re
import shutil
import socket
import sqlite3
import ssl
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import (REPO, FakeCloud, device_dataset, device_rows, fault,
                     mdhunt_bin, run_mdhunt, write_secret)

CATALOGUE = os.path.join(REPO, "tests", "bad-input")
RULE_ID = "zoho"
FILL_TIMES = ("2025-03-01T00:00:00Z", "2025-03-01T01:00:00Z")
CASE_TIME = "2025-03-01T02:00:00Z"
CASE_TIMEOUT = 30
QUERY = "DeviceInfo | take 1"
SMTP_PASSWORD = "smtp-CANARY-Pw0rd"
JSON_TYPE = "application/json; charset=utf-8"
KINDS = ("config", "secret", "rule", "exclusions", "graph", "defender",
         "token", "smtp")
FILE_KINDS = ("config", "secret", "rule", "exclusions")
API_KINDS = ("graph", "defender", "token")
CASE_KEYS = {
    "name", "about", "input", "file_name", "via", "status", "content_type",
    "headers", "config", "args", "env", "exit", "stderr", "stderr_not",
    "stdout", "failed_run",
}
# What a crash or a sanitizer report looks like on stderr.
CRASH_RE = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:|"
                      r"Segmentation fault|Aborted|core dumped")

RULE_TEXT = """id: %s
name: Zoho Assist file signatures
queryFrequency: 1h
queryPeriod: 1d
entityMappings:
  - entityType: Host
    fieldMappings:
      - identifier: HostName
        columnName: DeviceName
query: |
  DeviceFileCertificateInfo
  | where Signer has 'Zoho'
  | summarize FirstSeen=min(Timestamp), LastSeen=max(Timestamp),
      Report=make_set(ReportId), Count=count() by DeviceId, DeviceName
""" % RULE_ID


def build_input(spec, where, values=None):
    """Return the bytes of an input spec (see README.md), with the
    placeholders of its strings replaced when values is given."""
    if isinstance(spec, str):
        text = substitute(spec, values) if values is not None else spec
        return text.encode("utf-8")
    if isinstance(spec, list):
        return b"".join(build_input(part, where, values) for part in spec)
    if not isinstance(spec, dict) or len(spec) == 0:
        raise ValueError("%s: an input part must be a string, a list or "
                         "an object, not %r" % (where, spec))
    if "lines" in spec:
        return b"".join(build_input(line, where, values) + b"\n"
                        for line in spec["lines"])
    if "hex" in spec:
        return binascii.unhexlify(spec["hex"].replace(" ", ""))
    if "repeat" in spec:
        return repeat_input(spec, where, values)
    if "file" in spec:
        with open(os.path.join(CATALOGUE, "files", spec["file"]), "rb") as f:
            return f.read()
    raise ValueError("%s: unknown input part %r" % (where, sorted(spec)))


def repeat_input(spec, where, values):
    """Return spec["repeat"] count times, joined by spec["join"]; with
    "numbered", "{i}" in each copy becomes its index from 0."""
    unit = build_input(spec["repeat"], where, values)
    count = int(spec["count"])
    join = spec.get("join", "").encode("utf-8")
    if spec.get("numbered"):
        copies = (unit.replace(b"{i}", b"%d" % i) for i in range(count))
    else:
        copies = (unit for _ in range(count))
    return join.join(copies)


def load_catalogue():
    """Return every case as (kind, case) in file order, checking fields."""
    cases = []
    names = set()
    for file_name in sorted(os.listdir(CATALOGUE)):
        if not file_name.endswith(".json"):
            continue
        path = os.path.join(CATALOGUE, file_name)
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
        kind = document["kind"]
        if kind not in KINDS:
            raise ValueError("%s: unknown kind %r" % (path, kind))
        for index, case in enumerate(document["cases"]):
            where = "%s: case %d" % (path, index + 1)
            unknown = set(case) - CASE_KEYS
            if unknown:
                raise ValueError("%s: unknown keys %s"
                                 % (where, sorted(unknown)))
            for key in ("name", "input", "exit", "stderr"):
                if key not in case:
                    raise ValueError("%s: %s is missing" % (where, key))
            name = "%s_%s" % (kind, case["name"].replace("-", "_"))
            if name in names:
                raise ValueError("%s: name %s is used twice"
                                 % (where, case["name"]))
            names.add(name)
            cases.append((kind, case))
    return cases


def substitute(text, values, quote=str):
    """Replace each @NAME@ of text by quote(values[NAME])."""
    def replace(match):
        name = match.group(1)
        if name not in values:
            raise KeyError("unknown placeholder @%s@" % name)
        return quote(values[name])
    return re.sub(r"@([A-Z_]+)@", replace, text)


class RawServer:
    """HTTPS on 127.0.0.1 that sends one preset reply to any request."""

    def __init__(self, cert_file, key_file):
        self.reply = (200, JSON_TYPE, b"")
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status, content_type, body = owner.reply
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self.server.socket = context.wrap_socket(self.server.socket,
                                                 server_side=True)
        self.url = "https://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# Replies of a healthy SMTP server, by stage.  STARTTLS is offered before
# TLS only; AUTH after it.
SMTP_REPLIES = {
    "greeting": b"220 127.0.0.1 ESMTP scripted\r\n",
    "ehlo": b"250-127.0.0.1\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
    "starttls": b"220 2.0.0 ready to start TLS\r\n",
    "ehlo_tls": b"250-127.0.0.1\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n",
    "auth_prompt": b"334 \r\n",
    "auth": b"235 2.7.0 authenticated\r\n",
    "mail": b"250 2.1.0 sender ok\r\n",
    "rcpt": b"250 2.1.5 recipient ok\r\n",
    "data": b"354 end data with <CR><LF>.<CR><LF>\r\n",
    "data_end": b"250 2.0.0 queued\r\n",
    "rset": b"250 2.0.0 ok\r\n",
    "noop": b"250 2.0.0 ok\r\n",
    "quit": b"221 2.0.0 bye\r\n",
    "unknown": b"502 5.5.2 command not recognised\r\n",
}
SMTP_VERBS = {"EHLO": "ehlo", "HELO": "ehlo", "STARTTLS": "starttls",
              "AUTH": "auth", "MAIL": "mail", "RCPT": "rcpt",
              "DATA": "data", "RSET": "rset", "NOOP": "noop",
              "QUIT": "quit"}
CLOSE = b"@CLOSE"
SMTP_IDLE_TIMEOUT = 15


class ScriptedSmtp:
    """A loopback SMTP server that plays SMTP_REPLIES, with the current
    case's replacements, one connection at a time.

    A reply that ends with "@CLOSE" is sent without that marker, and then
    the connection is closed.  The TLS certificate is the fake cloud's.
    """

    def __init__(self, cert_file, key_file):
        self.overrides = {}
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping = True
        self.sock.close()

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(SMTP_IDLE_TIMEOUT)
            try:
                self._dialogue(conn)
            except (OSError, ssl.SSLError, ValueError):
                pass
            finally:
                conn.close()

    def _replied(self, stage):
        return self.overrides.get(stage, SMTP_REPLIES[stage])

    def _reply(self, conn, stage):
        """Send the stage's reply; return False when it closes."""
        reply = self._replied(stage)
        closes = reply.endswith(CLOSE)
        if closes:
            reply = reply[:-len(CLOSE)]
        conn.sendall(reply)
        return not closes

    def _dialogue(self, conn):
        stream = conn.makefile("rb")
        in_tls = False
        if not self._reply(conn, "greeting"):
            return
        while True:
            line = stream.readline(65536)
            if not line:
                return
            verb = line.split(b" ", 1)[0].strip().upper().decode(
                "ascii", "replace")
            stage = SMTP_VERBS.get(verb, "unknown")
            if stage == "ehlo" and in_tls:
                stage = "ehlo_tls"
            if stage == "auth" and not self._auth_prompts(conn, stream,
                                                          line):
                return
            if not self._reply(conn, stage):
                return
            if stage == "starttls":
                stream.close()
                conn = self.context.wrap_socket(conn, server_side=True)
                stream = conn.makefile("rb")
                in_tls = True
            elif stage == "data" and self._replied(stage).startswith(b"3"):
                if not self._read_data(conn, stream):
                    return
            elif stage == "quit":
                return

    def _auth_prompts(self, conn, stream, line):
        """Ask for what AUTH did not send: LOGIN's user name and password,
        PLAIN's credentials.  Return False when the connection ends."""
        words = line.split()
        mechanism = words[1].upper() if len(words) > 1 else b""
        prompts = 2 if mechanism == b"LOGIN" else 1
        prompts -= len(words) - 2 if len(words) > 2 else 0
        for _ in range(prompts):
            if not self._reply(conn, "auth_prompt"):
                return False
            if not stream.readline(65536):
                return False
        return True

    def _read_data(self, conn, stream):
        while True:
            line = stream.readline(1 << 20)
            if not line:
                return False
            if line in (b".\r\n", b".\n"):
                return self._reply(conn, "data_end")


def dump_tables(path):
    """Return {table: sorted rows} of every table of the store."""
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        names = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        tables = {}
        for name in names:
            rows = db.execute('SELECT * FROM "%s"' % name).fetchall()
            tables[name] = sorted(rows, key=repr)
        return tables
    finally:
        db.close()


def integrity(path):
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return db.execute("PRAGMA integrity_check").fetchall()
    finally:
        db.close()


class BadInputTest(unittest.TestCase):
    """One fake cloud, one raw server and one SMTP script for all cases;
    test methods are added from the catalogue below the class."""

    @classmethod
    def setUpClass(cls):
        mdhunt_bin()
        cls.dir = tempfile.mkdtemp(prefix="mdhunt-bad-input-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.fake = FakeCloud()
        cls.addClassCleanup(cls.fake.stop)
        cls.fake.start()
        cert = cls.fake.path("server.pem")
        key = cls.fake.path("server-key.pem")
        cls.raw = RawServer(cert, key)
        cls.addClassCleanup(cls.raw.stop)
        cls.smtp = ScriptedSmtp(cert, key)
        cls.addClassCleanup(cls.smtp.stop)

        cls.rules_dir = cls.path("rules")
        os.mkdir(cls.rules_dir)
        cls.rule_file = os.path.join(cls.rules_dir, RULE_ID + ".yaml")
        with open(cls.rule_file, "w", encoding="utf-8") as f:
            f.write(RULE_TEXT)
        cls.secret_file = write_secret(cls.path("secret"))
        smtp_password = write_secret(cls.path("smtp-password"),
                                     SMTP_PASSWORD)
        cls.store = cls.path("mdhunt.db")
        cls.pristine = cls.path("pristine.db")
        cls.values = {
            "URL": cls.fake.url, "RAW_URL": cls.raw.url,
            "CA": cls.fake.ca_file, "SECRET": cls.secret_file,
            "STORE": cls.store, "RULES": cls.rules_dir,
            "RULE": cls.rule_file, "SMTP_PORT": str(cls.smtp.port),
            "SMTP_PASSWORD": smtp_password,
            "TENANT": cls.fake.state["tenants"][0]["id"],
            "CLIENT": cls.fake.state["apps"][0]["client_id"],
        }
        cls.configs = {}
        for name, backend, api_url, authority in (
                ("graph", "graph", "@URL@", "@URL@"),
                ("defender", "defender", "@URL@", "@URL@"),
                ("graph_raw", "graph", "@RAW_URL@", "@URL@"),
                ("defender_raw", "defender", "@RAW_URL@", "@URL@"),
                ("token_raw", "graph", "@URL@", "@RAW_URL@")):
            cls.configs[name] = cls.write_config(
                name + ".ini", cls.config_text(backend, api_url, authority))
        cls.configs["smtp"] = cls.write_config(
            "smtp.ini", cls.config_text("graph", "@URL@", "@URL@")
            + cls.mail_text())
        cls.configs["smtp_auth"] = cls.write_config(
            "smtp-auth.ini", cls.config_text("graph", "@URL@", "@URL@")
            + cls.mail_text() + "username = mdhunt@contoso.com\n"
            "password_file = @SMTP_PASSWORD@\n")
        for name, path in cls.configs.items():
            cls.values["CONFIG_" + name.upper()] = path
        cls.fill_store()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.dir, name)

    @classmethod
    def config_text(cls, backend, api_url, authority):
        return ("[auth]\ntenant_id = @TENANT@\nclient_id = @CLIENT@\n"
                "client_secret_file = @SECRET@\nauthority_url = %s\n\n"
                "[api]\nbackend = %s\nurl = %s\nca_file = @CA@\n"
                "timeout = 10\nconnect_timeout = 5\nmax_retries = 0\n\n"
                "[rules]\npath = @RULES@\n\n[store]\npath = @STORE@\n"
                % (authority, backend, api_url))

    @staticmethod
    def mail_text():
        return ("\n[mail]\nsmtp_url = smtp://127.0.0.1:@SMTP_PORT@\n"
                "ca_file = @CA@\nfrom = mdhunt@contoso.com\n"
                "to = soc@contoso.com\n")

    @classmethod
    def write_config(cls, name, text):
        path = cls.path(name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(substitute(text, cls.values))
        return path

    @classmethod
    def fill_store(cls):
        """Two successful runs, the second with one new device, with mail
        on so that both queue an outbox item; keep a copy of the result."""
        config = cls.write_config("fill.ini", cls.config_text(
            "graph", "@URL@", "@URL@") + cls.mail_text())
        first = device_rows(3, seed=31)
        datasets = (first, first + device_rows(1, seed=32))
        for now, rows in zip(FILL_TIMES, datasets):
            cls.fake.set_dataset({"columns": device_dataset(0)["columns"],
                                  "rows": rows})
            result = run_mdhunt(["-c", config, "run", "--once"],
                                env={"MDHUNT_TEST_NOW": now})
            if result.code != 0:
                raise AssertionError("filling the store failed: %s"
                                     % result.stderr)
        db = sqlite3.connect(cls.store)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            copy = sqlite3.connect(cls.pristine)
            db.backup(copy)
            copy.close()
        finally:
            db.close()
        tables = dump_tables(cls.pristine)
        for name in ("entity", "run_row", "outbox", "diff_event"):
            if not tables.get(name):
                raise AssertionError("the filled store has no %s rows"
                                     % name)

    def setUp(self):
        self.case_dir = tempfile.mkdtemp(dir=self.dir, prefix="case-")
        # The call budget file records holds after 429 replies, so it is
        # reset with the store.
        for suffix in ("", "-wal", "-shm", ".budget"):
            try:
                os.unlink(self.store + suffix)
            except FileNotFoundError:
                pass
        shutil.copyfile(self.pristine, self.store)
        self.fake.set_faults()
        self.smtp.overrides = {}

    def run_case(self, kind, case):
        where = "%s case %s" % (kind, case["name"])
        values = dict(self.values, TMP=self.case_dir)
        if kind == "smtp":
            self.smtp.overrides = self.smtp_overrides(case, where)
        elif kind in API_KINDS:
            self.serve_reply(kind, case, build_input(case["input"], where))
        if kind in FILE_KINDS:
            values.update(self.write_input(
                kind, case, build_input(case["input"], where, values)))
        values.setdefault("CONFIG", self.case_config(kind, case, values))

        args = [substitute(a, values)
                for a in case.get("args", self.default_args(kind))]
        env = {"MDHUNT_TEST_NOW": CASE_TIME}
        env.update({k: substitute(v, values)
                    for k, v in case.get("env", {}).items()})
        before = dump_tables(self.store)
        result = run_mdhunt(args, env=env, timeout=CASE_TIMEOUT)

        self.assertEqual(result.code, case["exit"], result.stderr)
        self.assertIsNone(CRASH_RE.search(result.stderr), result.stderr)
        self.assertRegex(result.stderr,
                         substitute(case["stderr"], values, re.escape))
        if "stderr_not" in case:
            self.assertNotRegex(result.stderr, case["stderr_not"])
        stdout = result.stdout.decode("utf-8", "replace")
        if "stdout" in case:
            self.assertRegex(stdout, case["stdout"])
        elif case["exit"] != 0:
            self.assertEqual(stdout, "")
        failed_run = case.get("failed_run", kind in API_KINDS
                              and "run" in args and "--once" in args)
        self.check_store(before, failed_run)

    def write_input(self, kind, case, data):
        """Write a file input; return the placeholders it defines."""
        default_name = {"config": "mdhunt.ini", "secret": "secret",
                        "rule": "rule.yaml",
                        "exclusions": "exclusions.yaml"}[kind]
        input_dir = os.path.join(self.case_dir, "input")
        os.mkdir(input_dir)
        path = os.path.join(input_dir, case.get("file_name", default_name))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return {"INPUT": path, "INPUT_DIR": input_dir}

    def serve_reply(self, kind, case, data):
        status = case.get("status", 200)
        content_type = case.get("content_type", JSON_TYPE)
        if case.get("via") == "raw":
            self.raw.reply = (status, content_type, data)
            return
        self.fake.set_faults(fault(
            kind, status=status, body_text=data.decode("utf-8"),
            content_type=content_type, headers=case.get("headers", {})))

    def smtp_overrides(self, case, where):
        if not isinstance(case["input"], dict):
            raise ValueError("%s: the input of an smtp case is an object "
                             "of stage to reply" % where)
        overrides = {}
        for stage, reply in case["input"].items():
            if stage not in SMTP_REPLIES:
                raise ValueError("%s: unknown SMTP stage %r"
                                 % (where, stage))
            overrides[stage] = build_input(reply, where)
        return overrides

    def case_config(self, kind, case, values):
        """Return the path of the configuration @CONFIG@ names."""
        text = None
        if "config" in case:
            text = build_input(case["config"], kind).decode("utf-8")
        elif kind == "secret":
            text = self.config_text("graph", "@URL@", "@URL@").replace(
                "@SECRET@", "@INPUT@")
        if text is not None:
            path = os.path.join(self.case_dir, "case.ini")
            with open(path, "w", encoding="utf-8") as f:
                f.write(substitute(text, values))
            return path
        if kind in API_KINDS and case.get("via") == "raw":
            return self.configs["token_raw" if kind == "token"
                                else kind + "_raw"]
        if kind == "smtp":
            return self.configs["smtp"]
        return self.configs["defender" if kind == "defender" else "graph"]

    @staticmethod
    def default_args(kind):
        if kind == "config":
            return ["-c", "@INPUT@", "hunt", "-q", QUERY]
        if kind == "rule":
            return ["-c", "@CONFIG@", "rules", "validate", "@INPUT@"]
        if kind == "exclusions":
            return ["-c", "@CONFIG@", "exclusions", "check", "@INPUT@"]
        if kind in API_KINDS:
            return ["-c", "@CONFIG@", "run", "--once", "--rule", RULE_ID]
        if kind == "smtp":
            return ["-c", "@CONFIG@", "mail-test"]
        return ["-c", "@CONFIG@", "hunt", "-q", QUERY]

    def check_store(self, before, failed_run):
        after = dump_tables(self.store)
        self.assertEqual(integrity(self.store), [("ok",)])
        self.assertEqual(sorted(after), sorted(before))
        for name in sorted(before):
            if name == "run":
                continue
            self.assertEqual(after[name], before[name],
                             "table %s changed" % name)
        new_runs = [r for r in after["run"] if r not in before["run"]]
        self.assertEqual(len(after["run"]) - len(before["run"]),
                         len(new_runs), "an earlier run row changed")
        if failed_run:
            self.assertEqual(len(new_runs), 1, "expected one failed run")
            self.assertIn("failed", new_runs[0])
        else:
            self.assertEqual(new_runs, [])


def _make_test(kind, case):
    def test(self):
        self.run_case(kind, case)
    test.__doc__ = case.get("about")
    return test


for _kind, _case in load_catalogue():
    setattr(BadInputTest, "test_%s_%s" % (_kind,
                                          _case["name"].replace("-", "_")),
            _make_test(_kind, _case))
