"""Shared helpers for the integration tests: the fake cloud and mdhunt.

FakeCloud starts tests/fake/fakecloud.py in a temporary state directory,
rewrites its fake.json, and reads the requests it logged.  FakeCloudTest
runs one fake per test class and resets it before each test.
run_mdhunt() runs the binary named by $MDHUNT_BIN (default build/mdhunt)
with a timeout.
"""

import base64
import collections
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FAKE_DIR = os.path.join(REPO, "tests", "fake")
FAKE_SCRIPT = os.path.join(FAKE_DIR, "fakecloud.py")
PYTHON = "/usr/bin/python3"

sys.path.insert(0, FAKE_DIR)

import fakestate  # noqa: E402

# Identities of the default state, for the tests.
TENANT_ID = fakestate.TENANT_ID
TENANT_DOMAIN = fakestate.TENANT_DOMAIN
CLIENT_ID = fakestate.CLIENT_ID
SECRET = fakestate.SECRET
EXPIRED_SECRET = fakestate.EXPIRED_SECRET
NO_ROLES_CLIENT_ID = fakestate.NO_ROLES_CLIENT_ID
NO_ROLES_SECRET = fakestate.NO_ROLES_SECRET
GRAPH_ROLE = fakestate.GRAPH_ROLE
DEFENDER_ROLE = fakestate.DEFENDER_ROLE
TOKEN_MARKER = fakestate.TOKEN_MARKER
WORKSPACE_ID = fakestate.WORKSPACE_ID
EMPTY_WORKSPACE_ID = fakestate.EMPTY_WORKSPACE_ID

# Every secret of the default state contains this word.
SECRET_MARKER = "CANARY"

START_TIMEOUT = 20
STOP_TIMEOUT = 5
RUN_TIMEOUT = 60

RunResult = collections.namedtuple("RunResult", "code stdout stderr")


class FakeCloud:
    """One running fakecloud.py and its state directory."""

    def __init__(self, state_dir=None):
        self.own_dir = state_dir is None
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="fakecloud-")
        self.process = None
        self.port = None
        self.state = None
        self._log = None

    @property
    def url(self):
        return "https://127.0.0.1:%d" % self.port

    @property
    def ca_file(self):
        return os.path.join(self.state_dir, "ca.pem")

    @property
    def other_ca_file(self):
        return os.path.join(self.state_dir, "other-ca.pem")

    def path(self, name):
        return os.path.join(self.state_dir, name)

    def start(self):
        """Start the fake and wait until it wrote its port."""
        port_file = self.path("port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.reset()
        self._log = open(self.path("fake.log"), "ab")
        self.process = subprocess.Popen(
            [PYTHON, FAKE_SCRIPT, "--state", self.state_dir],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("fakecloud exited with status %d: %s"
                                   % (self.process.returncode,
                                      self.log_text()))
            try:
                with open(port_file, encoding="ascii") as f:
                    self.port = int(f.read())
                return self
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("fakecloud wrote no port within %d s"
                           % START_TIMEOUT)

    def stop(self):
        """Stop the fake (SIGTERM, then SIGKILL) and remove its state."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.own_dir and not os.environ.get("MDHUNT_KEEP_STATE"):
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self):
        """Return what the fake wrote to stderr."""
        try:
            with open(self.path("fake.log"), encoding="utf-8",
                      errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def write_state(self):
        """Write self.state to fake.json atomically."""
        fakestate.write_json_atomic(self.path(fakestate.STATE_FILE),
                                    self.state)

    def reset(self):
        """Restore the default state and clear the request log."""
        self.state = fakestate.default_state()
        self.write_state()
        self.clear_requests()

    def set_dataset(self, dataset, name="default", contains=None,
                    sha256=None):
        """Add dataset; select it by query substring, by the query's
        SHA-256, or (with neither) make it the default."""
        self.state["datasets"][name] = dataset
        if contains is not None:
            self.state["select"].append(
                {"dataset": name, "query_contains": contains})
        elif sha256 is not None:
            self.state["select"].append(
                {"dataset": name, "query_sha256": sha256})
        else:
            self.state["default_dataset"] = name
        self.write_state()

    def set_query_error(self, kind, message=None, **select):
        """Make queries fail with kind: syntax, too_large or preempted."""
        dataset = {"error": kind}
        if message is not None:
            dataset["message"] = message
        self.set_dataset(dataset, name="error-" + kind, **select)

    def set_faults(self, *faults):
        """Replace the faults; each gets a fresh id, so a fresh counter."""
        self.state["faults"] = []
        for fault in faults:
            fault = dict(fault)
            fault.setdefault("id", str(uuid.uuid4()))
            self.state["faults"].append(fault)
        self.write_state()

    def set_options(self, **options):
        self.state["options"].update(options)
        self.write_state()

    def add_certificate(self, cert, client_id=CLIENT_ID, expired=False):
        """Register a client_certificate() with an app of the state."""
        for app in self.state["apps"]:
            if app["client_id"] == client_id:
                app.setdefault("certificates", []).append(
                    {"sha1": cert["sha1"], "sha256": cert["sha256"],
                     "pem": cert["pem"], "expired": expired})
        self.write_state()

    def revoke_tokens(self):
        """Make every token issued so far invalid."""
        self.set_options(tokens_revoked_before=time.time())

    def clear_requests(self):
        with open(self.path("requests.jsonl"), "w", encoding="utf-8"):
            pass

    def requests(self, endpoint=None):
        """Return the logged requests, oldest first, optionally of one
        endpoint ("token", "graph", "defender", "loganalytics")."""
        entries = []
        try:
            with open(self.path("requests.jsonl"), encoding="utf-8") as f:
                for line in f:
                    entries.append(json.loads(line))
        except FileNotFoundError:
            return []
        if endpoint is not None:
            entries = [e for e in entries if e["endpoint"] == endpoint]
        return entries


def request_body(entry):
    """Return the raw body bytes of a logged hunting request."""
    return base64.b64decode(entry["body_b64"])


def fault(endpoint=None, count=None, **effects):
    """Build a fault for FakeCloud.set_faults()."""
    result = dict(effects)
    if endpoint is not None:
        result["endpoint"] = endpoint
    if count is not None:
        result["count"] = count
    return result


def throttle_fault(endpoint, retry_after=1, count=None):
    """A 429 with Retry-After in seconds and the service's usual body."""
    if endpoint == "defender":
        error = {"code": "429", "message": "API calls quota exceeded! "
                 "maximum allowed 45 per 00:01:00"}
    else:
        error = {"code": "TooManyRequests",
                 "message": "Too many requests. Retry after %d seconds."
                 % retry_after}
    return fault(endpoint, count, status=429, error=error,
                 headers={"Retry-After": str(retry_after)})


def cpu_quota_fault(endpoint, count=None):
    # NOTE: a guess: the API is assumed to send the portal's wording.
    error = {"code": "429", "message": "You have exceeded processing "
             "resources allocated to this tenant. You can run queries "
             "again in 00:15:00."}
    if endpoint == "graph":
        error["code"] = "TooManyRequests"
    return fault(endpoint, count, status=429, error=error,
                 headers={"Retry-After": "900"})


def server_error_fault(endpoint, count=None):
    if endpoint == "graph":
        # Observed from runHuntingQuery: UnknownError with no message.
        error = {"code": "UnknownError", "message": ""}
    else:
        error = {"code": "InternalServerError",
                 "message": "An unexpected error occurred."}
    return fault(endpoint, count, status=500, error=error)


# Faults that a retry gets past, by kind, for fault_script().  "delay"
# is longer than the timeout the scripted tests configure.
RETRYABLE_KINDS = ("throttle", "server_error", "reset", "delay", "truncate",
                   "not_json", "expired_token")
SCRIPT_TIMEOUT = 3
SCRIPT_DELAY = 4


def retryable_fault(kind, endpoint, count=None):
    """A fault of one of RETRYABLE_KINDS for a hunting endpoint."""
    if kind == "throttle":
        return throttle_fault(endpoint, retry_after=1, count=count)
    if kind == "server_error":
        return server_error_fault(endpoint, count)
    if kind == "reset":
        return fault(endpoint, count, reset=True)
    if kind == "delay":
        return fault(endpoint, count, delay=SCRIPT_DELAY)
    if kind == "truncate":
        return fault(endpoint, count, truncate=True)
    if kind == "not_json":
        return fault(endpoint, count, status=200,
                     body_text="<html><body>Service Unavailable</body>"
                               "</html>")
    if kind == "expired_token":
        return fault(endpoint, count, expire_token=True)
    raise ValueError("unknown fault kind %r" % kind)


def fault_script(seed, endpoint, calls, rate=0.3, kinds=RETRYABLE_KINDS,
                 max_run=3):
    """Pick faults for calls 1..calls of endpoint from a seeded generator.

    Each call is hit with probability rate, by a kind drawn from kinds.
    No more than max_run calls in a row are hit, so that a client with
    more retries than that always gets through, and an expired token
    never follows an expired token (a client retries a 401 once).
    Returns (faults for FakeCloud.set_faults, {call number: kind}).
    """
    rng = random.Random(seed)
    plan = {}
    run = 0
    for call in range(1, calls + 1):
        if run >= max_run or rng.random() >= rate:
            run = 0
            continue
        kind = rng.choice(kinds)
        if kind == "expired_token" and plan.get(call - 1) == kind:
            kind = "server_error"
        plan[call] = kind
        run += 1
    faults = []
    for kind in sorted(set(plan.values())):
        entry = retryable_fault(kind, endpoint)
        entry["on_calls"] = sorted(c for c, k in plan.items() if k == kind)
        faults.append(entry)
    return faults, plan


def client_certificate(directory, name="mdhunt", key_size=2048,
                       passphrase=None, days=30, combined=False):
    """Make an RSA key and a self-signed certificate for an app.

    Writes NAME-key.pem (encrypted with passphrase when given) and
    NAME-cert.pem, or one NAME.pem holding both when combined.  Returns a
    dict: cert_file, key_file, pem (the certificate), sha1, sha256 (hex
    thumbprints of the DER form).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    encryption = (serialization.BestAvailableEncryption(
        passphrase.encode("utf-8")) if passphrase
        else serialization.NoEncryption())
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                encryption)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    der = cert.public_bytes(serialization.Encoding.DER)
    if combined:
        cert_file = key_file = os.path.join(directory, name + ".pem")
        _write_private(cert_file, cert_pem + key_pem)
    else:
        cert_file = os.path.join(directory, name + "-cert.pem")
        key_file = os.path.join(directory, name + "-key.pem")
        _write_private(key_file, key_pem)
        with open(cert_file, "wb") as f:
            f.write(cert_pem)
    return {"cert_file": cert_file, "key_file": key_file,
            "pem": cert_pem.decode("ascii"),
            "sha1": hashlib.sha1(der).hexdigest().upper(),
            "sha256": hashlib.sha256(der).hexdigest().upper()}


def _write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _ticks(instant, rng):
    """Format a UTC datetime with 7 fractional digits and Z."""
    return instant.strftime("%Y-%m-%dT%H:%M:%S.") + "%07dZ" % (
        instant.microsecond * 10 + rng.randint(0, 9))


DEVICE_COLUMNS = [
    ["DeviceId", "string"],
    ["DeviceName", "string"],
    ["FirstSeen", "datetime"],
    ["LastSeen", "datetime"],
    ["Report", "dynamic"],
    ["Count", "long"],
]

HOST_WORDS = ["fin", "hr", "dev", "ops", "sales", "lab", "ceo", "it"]


def device_rows(count, seed=1, names=None):
    """Make count device rows like the ZohoAssist rule's result.

    DeviceId is 40 hex digits like a Defender device id, the times fall
    in the last five days, and Report is a list of ReportIds.  names, when
    given, replaces the generated DeviceName values in order.
    """
    rng = random.Random(seed)
    now = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for i in range(count):
        device_id = "%040x" % rng.getrandbits(160)
        name = "wks-%s-%03d.contoso.local" % (rng.choice(HOST_WORDS),
                                              rng.randint(1, 999))
        if names is not None and i < len(names):
            name = names[i]
        first = now - datetime.timedelta(
            seconds=rng.randint(3600, 5 * 86400 - 60))
        last = first + datetime.timedelta(
            seconds=rng.randint(0, int((now - first).total_seconds())))
        reports = sorted(rng.sample(range(1000, 999999), rng.randint(1, 4)))
        rows.append([device_id, name, _ticks(first, rng), _ticks(last, rng),
                     reports, len(reports) * rng.randint(1, 6)])
    return rows


def device_dataset(count=3, seed=1, names=None, expand_to=None):
    """A dataset shaped like the ZohoAssist rule's result.

    With expand_to the fake repeats the rows up to that many, putting the
    row number into DeviceId and DeviceName so every row is distinct.
    """
    rows = device_rows(count, seed, names)
    dataset = {"columns": DEVICE_COLUMNS, "rows": rows}
    if expand_to is not None:
        for row in rows:
            row[0] = row[0][:30] + "{i}"
            row[1] = "wks-{i}.contoso.local"
        dataset["expand"] = {"count": expand_to}
    return dataset


def write_secret(path, secret=SECRET):
    """Write a client secret file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
    return path


def config_text(fake, backend, secret_file=None, tenant=TENANT_ID,
                client_id=CLIENT_ID, ca_file=None, timeout=10,
                connect_timeout=5, url=None, authority_url=None,
                extra="", certificate_file=None, private_key_file=None,
                passphrase_file=None, assertion_alg=None, workspace_id=None):
    """Return an mdhunt INI configuration for the fake and backend.

    A value of None leaves its key out, except that the sentinel backend
    gets WORKSPACE_ID unless workspace_id says otherwise ("" leaves it
    out).  extra is appended as it is,
    right after the [api] keys.
    """
    if backend == "sentinel" and workspace_id is None:
        workspace_id = WORKSPACE_ID
    auth = [("tenant_id", tenant), ("client_id", client_id),
            ("client_secret_file", secret_file),
            ("certificate_file", certificate_file),
            ("private_key_file", private_key_file),
            ("passphrase_file", passphrase_file),
            ("assertion_alg", assertion_alg),
            ("authority_url", authority_url or fake.url)]
    api = [("backend", backend), ("url", url or fake.url),
           ("ca_file", ca_file or fake.ca_file),
           ("timeout", timeout), ("connect_timeout", connect_timeout),
           ("workspace_id", workspace_id or None)]
    lines = ["[auth]"]
    lines += ["%s = %s" % (k, v) for k, v in auth if v is not None]
    lines += ["", "[api]"]
    lines += ["%s = %s" % (k, v) for k, v in api if v is not None]
    return "\n".join(lines) + "\n" + extra


def write_config(path, fake, backend, **kwargs):
    """Write config_text() to path; returns path."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(config_text(fake, backend, **kwargs))
    return path


def mdhunt_bin():
    """Return the path of the mdhunt binary under test.

    Raises AssertionError when it is not an executable file.
    """
    path = os.environ.get("MDHUNT_BIN", "build/mdhunt")
    path = path if os.path.isabs(path) else os.path.join(REPO, path)
    if not os.access(path, os.X_OK):
        raise AssertionError("%s is not an executable; build it with make "
                             "or set MDHUNT_BIN" % path)
    return path


def mdhunt_env(extra=None):
    """Return the environment for mdhunt: ours without MDHUNT_*."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MDHUNT_")}
    env.update(extra or {})
    return env


def run_mdhunt(args, env=None, timeout=RUN_TIMEOUT, stdin=None):
    """Run mdhunt with args; returns RunResult(code, stdout bytes,
    stderr text).  Raises AssertionError when it runs past timeout."""
    binary = mdhunt_bin()
    try:
        done = subprocess.run([binary] + list(args), cwd=REPO,
                              env=mdhunt_env(env), input=stdin,
                              stdin=None if stdin is not None
                              else subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("mdhunt %s did not finish within %d s"
                             % (" ".join(args), timeout)) from None
    return RunResult(done.returncode, done.stdout,
                     done.stderr.decode("utf-8", errors="replace"))


def closed_port():
    """Return a loopback port that nothing listens on (at the moment)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BLOCK_RE = re.compile(r"^query:[ \t]*\|([+-]?)[ \t]*$")


def literal_block_query(text):
    """Return the value of a top-level "query: |" literal block scalar.

    Follows YAML 1.2: line breaks become LF, the block's indentation is
    that of its first non-empty line, and chomping is clip ("|"), strip
    ("|-") or keep ("|+").  A file without a final line break gives the
    last line none.  Returns None when there is no such block.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    final_break = lines[-1] == ""
    if final_break:
        lines.pop()
    for start, line in enumerate(lines):
        match = BLOCK_RE.match(line)
        if match:
            break
    else:
        return None
    body = []
    indent = None
    for line in lines[start + 1:]:
        if line.strip(" ") == "":
            body.append(line[indent:] if indent else "")
            continue
        width = len(line) - len(line.lstrip(" "))
        if indent is None:
            indent = width
        if width < indent:
            break
        body.append(line[indent:])
    ends_file = start + 1 + len(body) == len(lines)
    breaks = ["\n"] * len(body)
    if breaks and ends_file and not final_break:
        breaks[-1] = ""
    content = "".join(line + brk for line, brk in zip(body, breaks))
    chomp = match.group(1)
    if chomp == "+":
        return content
    stripped = content.rstrip("\n")
    if chomp == "-" or not content.endswith("\n") or not stripped:
        return stripped
    return stripped + "\n"


def expected_query(rule_path):
    """Return the bytes mdhunt must send as the query of rule_path.

    Taken from tests/data/corpus/expected/<file name>.kql when that file
    exists, else from the rule's "query: |" block.
    """
    expected = os.path.join(REPO, "tests", "data", "corpus", "expected",
                            os.path.basename(rule_path) + ".kql")
    if os.path.exists(expected):
        with open(expected, "rb") as f:
            return f.read()
    with open(rule_path, "rb") as f:
        query = literal_block_query(f.read().decode("utf-8"))
    if query is None:
        raise AssertionError("%s has no \"query: |\" block and no %s"
                             % (rule_path, expected))
    return query.encode("utf-8")


class FakeCloudTest(unittest.TestCase):
    """Base class: one fake per test class, reset before each test."""

    fake = None

    @classmethod
    def setUpClass(cls):
        cls.fake = FakeCloud()
        cls.addClassCleanup(cls.fake.stop)
        cls.fake.start()

    def setUp(self):
        self.fake.reset()
        self.tmp = tempfile.mkdtemp(prefix="mdhunt-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def tmp_path(self, name):
        return os.path.join(self.tmp, name)
