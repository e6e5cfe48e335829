"""State of the fake cloud: the control file, fault counters and tokens.

A test controls the fake by rewriting STATE/fake.json (atomically: write a
temporary file, then rename it).  The server checks the file on every
request and reloads it when it changed.  The file contains:

  tenants   [{"id": GUID, "domains": [verified domain, ...]}]
  apps      [{"tenant": GUID, "client_id": GUID, "name": str,
              "secrets": [{"value": str, "expired": bool}],
              "certificates": [{"sha1": hex, "sha256": hex,
                                "pem": str, "expired": bool}],
              "roles": {resource: [application role, ...]}}]
  resources [App ID URI of each resource the directory contains, ...]
  workspaces [{"id": GUID, "readers": [client_id, ...],
               "empty": bool}], see loganalytics.py
  datasets  {name: dataset}, see hunting.py for the dataset format
  select    [{"dataset": name, "query_contains": str}
             | {"dataset": name, "query_sha256": hex}]
  default_dataset  name or null
  faults    [fault], see apply order in fakecloud.py and FAULT_KEYS
  options   see DEFAULT_OPTIONS

Fault counters live in STATE/fault-counts.json, keyed by the fault's "id"
(the harness sets a fresh one per fault) or by a hash of the fault.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import time

STATE_FILE = "fake.json"
COUNTS_FILE = "fault-counts.json"

GRAPH_RESOURCE = "https://graph.microsoft.com"
DEFENDER_RESOURCE = "https://api.security.microsoft.com"
MDE_RESOURCE = "https://api.securitycenter.microsoft.com"
LOG_ANALYTICS_RESOURCE = "https://api.loganalytics.io"

GRAPH_ROLE = "ThreatHunting.Read.All"
DEFENDER_ROLE = "AdvancedHunting.Read.All"

TENANT_ID = "3f1c2a9e-7b4d-4c8e-9a61-5d2e8f0b7c34"
TENANT_DOMAIN = "contoso.onmicrosoft.com"
CLIENT_ID = "8d0e5b17-2f6a-4e39-b1c4-7a9d3e6f2051"
NO_ROLES_CLIENT_ID = "c47a91d2-5e08-4b6f-8d23-0f1e9b7a6c58"
# Log Analytics workspaces: CLIENT_ID may read both, NO_ROLES_CLIENT_ID
# neither; the empty one holds no data.
WORKSPACE_ID = "5b8e2f14-6c3a-4d97-a0e1-9f4c7b2d6e83"
EMPTY_WORKSPACE_ID = "e19d4c7a-3b52-4f08-96ad-2c7e5f1b0a94"

# Every secret contains "CANARY", so a test can search any output for that
# one word.  The characters "~", "+", "/" and "=" must be percent-encoded
# in a form body, so a client that skips the encoding gets AADSTS7000215.
SECRET = "S3cr3t-CANARY-Zq8~Vw.x_Kp+3/Lm=Q7"
EXPIRED_SECRET = "S3cr3t-CANARY-old-Rt5~Yh.n_Bw+9/Jc=K2"
NO_ROLES_SECRET = "S3cr3t-CANARY-noroles-Ue4~Gs.m_Fd+1/Xa=P6"

# Every access token the fake issues contains this marker in its signature
# part, so tests can check that no token reaches an output.
TOKEN_MARKER = "TokenCanary"

DEFAULT_TOKEN_LIFETIME = 3599
ROW_LIMIT = 100000
LA_ROW_LIMIT = 500000

DEFAULT_OPTIONS = {
    # Seconds an access token lives and the expires_in the fake reports.
    "token_lifetime": DEFAULT_TOKEN_LIFETIME,
    # "lower" sends Graph schema entries as {"name", "type"}, "pascal" as
    # {"Name", "Type"}: the Graph documentation shows both.
    "graph_schema_keys": "lower",
    # Tokens issued at or before this Unix time (seconds) are rejected.
    "tokens_revoked_before": 0,
    # Serve the v1 token endpoint /{tenant}/oauth2/token.
    "v1_token_endpoint": True,
    # Rows a hunting reply contains at most.
    "row_limit": ROW_LIMIT,
    # Rows a Log Analytics reply contains at most; more rows make a
    # partial result.
    "la_row_limit": LA_ROW_LIMIT,
}

FAULT_KEYS = {
    "id", "endpoint", "count", "delay", "status", "headers", "body",
    "body_text", "content_type", "error", "empty", "truncate", "drop",
    "token", "reset", "on_calls", "expire_token",
}
FAULT_TOKEN_KEYS = {"lifetime", "expires_in_string", "expired_on_issue"}
ENDPOINTS = {"token", "graph", "defender", "loganalytics"}

GUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12}$")


class StateError(Exception):
    """An invalid fake.json; the message names the file and the field."""


def default_state():
    """Return the state a fresh fake starts with: one tenant, two apps."""
    return {
        "tenants": [{"id": TENANT_ID, "domains": [TENANT_DOMAIN]}],
        "apps": [
            {
                "tenant": TENANT_ID,
                "client_id": CLIENT_ID,
                "name": "mdhunt-tests",
                "secrets": [
                    {"value": SECRET, "expired": False},
                    {"value": EXPIRED_SECRET, "expired": True},
                ],
                "certificates": [],
                "roles": {
                    GRAPH_RESOURCE: [GRAPH_ROLE],
                    DEFENDER_RESOURCE: [DEFENDER_ROLE],
                },
            },
            {
                "tenant": TENANT_ID,
                "client_id": NO_ROLES_CLIENT_ID,
                "name": "mdhunt-tests-no-roles",
                "secrets": [{"value": NO_ROLES_SECRET, "expired": False}],
                "certificates": [],
                "roles": {},
            },
        ],
        "resources": [GRAPH_RESOURCE, DEFENDER_RESOURCE, MDE_RESOURCE,
                      LOG_ANALYTICS_RESOURCE],
        "workspaces": [
            {"id": WORKSPACE_ID, "readers": [CLIENT_ID]},
            {"id": EMPTY_WORKSPACE_ID, "readers": [CLIENT_ID],
             "empty": True},
        ],
        "datasets": {},
        "select": [],
        "default_dataset": None,
        "faults": [],
        "options": dict(DEFAULT_OPTIONS),
    }


def write_json_atomic(path, value):
    """Write value as JSON to path through a temporary file and a rename."""
    tmp = "%s.%d.%d.tmp" % (path, os.getpid(), threading.get_ident())
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False)
    os.replace(tmp, path)


def _require(cond, where, message):
    if not cond:
        raise StateError("%s: %s" % (where, message))


def _check_list(state, key, where):
    value = state.get(key, [])
    _require(isinstance(value, list), "%s: %s" % (where, key),
             "must be a list")
    return value


def _check_apps(state, where):
    for i, app in enumerate(_check_list(state, "apps", where)):
        at = "%s: apps[%d]" % (where, i)
        _require(isinstance(app, dict), at, "must be an object")
        for key in ("tenant", "client_id"):
            _require(isinstance(app.get(key), str), at,
                     "%s must be a string" % key)
        for j, secret in enumerate(app.get("secrets", [])):
            _require(isinstance(secret, dict)
                     and isinstance(secret.get("value"), str),
                     "%s.secrets[%d]" % (at, j),
                     "must be an object with a string value")
        for j, cert in enumerate(app.get("certificates", [])):
            _require(isinstance(cert, dict) and all(
                isinstance(cert.get(key), str)
                for key in ("sha1", "sha256", "pem")),
                "%s.certificates[%d]" % (at, j),
                "must be an object with string sha1, sha256 and pem")
        roles = app.get("roles", {})
        _require(isinstance(roles, dict), at + ".roles",
                 "must be an object of resource to role list")
        for resource, names in roles.items():
            _require(isinstance(names, list)
                     and all(isinstance(n, str) for n in names),
                     "%s.roles[%s]" % (at, resource),
                     "must be a list of strings")


def _check_faults(state, where):
    for i, fault in enumerate(_check_list(state, "faults", where)):
        at = "%s: faults[%d]" % (where, i)
        _require(isinstance(fault, dict), at, "must be an object")
        unknown = set(fault) - FAULT_KEYS
        _require(not unknown, at, "unknown keys %s" % sorted(unknown))
        endpoint = fault.get("endpoint")
        _require(endpoint is None or endpoint in ENDPOINTS, at,
                 "endpoint must be one of %s" % sorted(ENDPOINTS))
        status = fault.get("status", 200)
        _require(isinstance(status, int) and 100 <= status <= 599, at,
                 "status must be an HTTP status code")
        count = fault.get("count")
        _require(count is None or (isinstance(count, int) and count >= 0),
                 at, "count must be a non-negative integer or null")
        token = fault.get("token", {})
        _require(isinstance(token, dict)
                 and not set(token) - FAULT_TOKEN_KEYS, at + ".token",
                 "must be an object with keys from %s"
                 % sorted(FAULT_TOKEN_KEYS))
        calls = fault.get("on_calls")
        _require(calls is None or (isinstance(calls, list) and all(
            isinstance(n, int) and n >= 1 for n in calls)), at,
            "on_calls must be a list of call numbers from 1")


def _check_selection(state, where):
    datasets = state.get("datasets", {})
    _require(isinstance(datasets, dict), where + ": datasets",
             "must be an object of name to dataset")
    for i, rule in enumerate(_check_list(state, "select", where)):
        at = "%s: select[%d]" % (where, i)
        _require(isinstance(rule, dict) and rule.get("dataset") in datasets,
                 at, "dataset must name an entry of datasets")
        _require(("query_contains" in rule) != ("query_sha256" in rule), at,
                 "needs exactly one of query_contains, query_sha256")
    default = state.get("default_dataset")
    _require(default is None or default in datasets,
             where + ": default_dataset", "must be null or a dataset name")


def validate_state(state, where):
    """Check the shape of a loaded state; raise StateError naming the field.

    Datasets are checked when a query selects them, so that one broken
    dataset does not break requests that never use it.
    """
    _require(isinstance(state, dict), where, "must contain a JSON object")
    for i, tenant in enumerate(_check_list(state, "tenants", where)):
        at = "%s: tenants[%d]" % (where, i)
        _require(isinstance(tenant, dict)
                 and isinstance(tenant.get("id"), str)
                 and GUID_RE.match(tenant["id"]), at,
                 "needs an id that is a GUID")
        _require(isinstance(tenant.get("domains", []), list), at,
                 "domains must be a list")
    _check_apps(state, where)
    _check_list(state, "resources", where)
    _check_selection(state, where)
    _check_faults(state, where)
    options = state.get("options", {})
    _require(isinstance(options, dict), where + ": options",
             "must be an object")
    unknown = set(options) - set(DEFAULT_OPTIONS)
    _require(not unknown, where + ": options",
             "unknown keys %s" % sorted(unknown))


class StateStore:
    """The state directory: fake.json, fault counters and the request log."""

    def __init__(self, state_dir):
        self.dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)
        self._lock = threading.Lock()
        self._data = None
        self._state = None

    def ensure_file(self):
        """Write the default state unless fake.json exists."""
        if not os.path.exists(self.path):
            write_json_atomic(self.path, default_state())

    def load(self):
        """Return the current state, parsing fake.json again when its
        bytes changed.  Raises StateError when it is missing or invalid.
        """
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise StateError("%s: not found" % self.path) from None
            # Compare the bytes, not the mtime: two rewrites within one
            # clock tick can have the same size, mtime and inode number.
            if data == self._data:
                return self._state
            try:
                state = json.loads(data.decode("utf-8"))
            except ValueError as e:
                raise StateError("%s: %s" % (self.path, e)) from None
            validate_state(state, self.path)
            options = dict(DEFAULT_OPTIONS)
            options.update(state.get("options", {}))
            state["options"] = options
            self._state, self._data = state, data
            return state

    def take_fault(self, state, endpoint):
        """Find the first fault for endpoint that has requests left.

        Counts the request against the fault and returns the fault, or
        returns None.  A fault with "on_calls" applies only to those
        calls: the numbers count the requests of its endpoint (of every
        endpoint when it names none) from 1.  Counters are kept in
        fault-counts.json, so they survive a restart of the fake.
        """
        counts_path = os.path.join(self.dir, COUNTS_FILE)
        faults = state.get("faults", [])
        with self._lock:
            counts = None
            calls = {}
            if any("on_calls" in fault for fault in faults):
                # Calls are counted per list of faults, so that a new list
                # counts from 1 again.
                generation = hashlib.sha256(" ".join(
                    fault_key(f) for f in faults).encode()).hexdigest()[:16]
                counts = _read_counts(counts_path)
                for name in (endpoint, "*"):
                    key = "calls:%s:%s" % (generation, name)
                    counts[key] = counts.get(key, 0) + 1
                    calls[name] = counts[key]
                write_json_atomic(counts_path, counts)
            for fault in faults:
                only = fault.get("endpoint")
                if only is not None and only != endpoint:
                    continue
                if ("on_calls" in fault
                        and calls.get(only or "*") not in fault["on_calls"]):
                    continue
                if counts is None:
                    counts = _read_counts(counts_path)
                key = fault_key(fault)
                used = counts.get(key, 0)
                limit = fault.get("count")
                if limit is not None and used >= limit:
                    continue
                counts[key] = used + 1
                write_json_atomic(counts_path, counts)
                return fault
        return None


def _read_counts(path):
    try:
        with open(path, encoding="utf-8") as f:
            counts = json.load(f)
    except FileNotFoundError:
        return {}
    if not isinstance(counts, dict):
        return {}
    return counts


def fault_key(fault):
    """Return the counter key of a fault: its id, else a hash of it."""
    if isinstance(fault.get("id"), str):
        return fault["id"]
    text = json.dumps(fault, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenStore:
    """Access tokens the fake issued, kept in memory only.

    A token looks like a JWT (three base64url parts) but the fake never
    verifies a signature: a token is valid when it is in this store, not
    expired and not revoked.  After a restart of the fake every earlier
    token is unknown and rejected, as a token for another directory would be.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._tokens = {}
        # (client_id, jti) of client assertions seen, to their expiry.
        self._assertions = {}

    def issue(self, tenant_id, client_id, resource, roles, lifetime,
              expired_on_issue=False):
        """Create a token for resource; returns (token text, record)."""
        now = time.time()
        token_id = _b64url(secrets.token_bytes(16))
        exp = now if expired_on_issue else now + lifetime
        claims = {
            "aud": resource,
            "iss": "https://sts.windows.net/%s/" % tenant_id,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(exp),
            "appid": client_id,
            "roles": list(roles),
            "tid": tenant_id,
            "uti": token_id,
            "ver": "1.0",
        }
        header = {"typ": "JWT", "alg": "RS256", "kid": "fakecloud"}
        signature = TOKEN_MARKER + _b64url(secrets.token_bytes(32))
        text = ".".join([
            _b64url(json.dumps(header, separators=(",", ":")).encode()),
            _b64url(json.dumps(claims, separators=(",", ":")).encode()),
            signature,
        ])
        record = {
            "id": token_id,
            "aud": resource,
            "roles": list(roles),
            "tenant": tenant_id,
            "client_id": client_id,
            "issued": now,
            "exp": exp,
        }
        with self._lock:
            self._tokens[text] = record
        return text, record

    def lookup(self, text):
        """Return the record of a token, or None for an unknown token."""
        with self._lock:
            return self._tokens.get(text)

    def expire(self, text):
        """Make a token expired from now on, as if its lifetime ran out."""
        with self._lock:
            record = self._tokens.get(text)
            if record is not None:
                record["exp"] = time.time() - 1

    def use_assertion(self, client_id, jti, keep_until):
        """Record the jti of a client assertion until keep_until (Unix
        time), when the assertion can no longer be used anyway.

        Returns False when the application used that jti before.
        """
        now = time.time()
        with self._lock:
            seen = self._assertions
            for key in [k for k, until in seen.items() if until < now]:
                del seen[key]
            key = (client_id.lower(), jti)
            if key in seen:
                return False
            seen[key] = float(keep_until)
            return True
