"""Integration tests of the sentinel backend against the fake Log
Analytics workspace.

The same dataset goes through graph, defender and sentinel: `hunt` must
print the same rows and canonical types, and `run --once` must find the
same new and gone devices.  Then the errors particular to Log Analytics:
the token audience, the workspace, its access rights, partial results,
the timespan and the Prefer: wait header.
"""

import json
import os
import shutil
import unittest

import harness
from harness import (DEVICE_COLUMNS, FakeCloudTest, NO_ROLES_CLIENT_ID,
                     NO_ROLES_SECRET, REPO, SECRET_MARKER, TOKEN_MARKER,
                     device_rows, expected_query, fault, request_body,
                     run_mdhunt, write_config, write_secret)

WORKSPACE_ID = harness.WORKSPACE_ID
EMPTY_WORKSPACE_ID = harness.EMPTY_WORKSPACE_ID

RULES = os.path.join(REPO, "config", "rules")
GRAPH_RULE = os.path.join(RULES, "rmm-zohoassist-file-signature.yaml")
SENTINEL_RULE = os.path.join(REPO, "config", "rules-sentinel",
                             "rmm-zohoassist-file-signature-sentinel.yaml")
BACKENDS = ("graph", "defender", "sentinel")
RULE_OF = {"graph": GRAPH_RULE, "defender": GRAPH_RULE,
           "sentinel": SENTINEL_RULE}

# A workspace the fake does not have.
UNKNOWN_WORKSPACE_ID = "0d6f3a92-41c8-4b7e-b5d0-8e2a9c1f7364"

# A 429 for the first request, as the service throttles.
THROTTLED_ONCE = fault("loganalytics", count=1, status=429,
                       error={"code": "ThrottledError",
                              "message": "Too many requests"},
                       headers={"Retry-After": "1"})

T0 = "2025-03-01T00:00:00Z"
T0_PLUS_1D = "2025-03-02T00:00:00Z"

# Columns of every Kusto type beyond those of DEVICE_COLUMNS, with a value
# for each device row.
EXTRA_COLUMNS = [
    ["IsSigned", "bool"],
    ["Score", "real"],
    ["Build", "int"],
    ["Age", "timespan"],
    ["DeviceGuid", "guid"],
    ["Fields", "dynamic"],
    ["Note", "string"],
]
EXTRA_VALUES = [
    [True, 0.5, 19045, "01:02:03.5000000",
     "6f1d2c3b-4a59-4e68-8d7c-0b1a2f3e4d5c",
     {"Tags": ["a", "b"], "Nested": {"Level": 2, "Empty": None}},
     "caf\u00e9 \u65e5\u672c"],
    [False, 1e3, -1, "-1.00:00:00", None, ["x", 1, True], None],
    [None, None, None, None, "00000000-0000-0000-0000-000000000000", None,
     ""],
]


def all_types_dataset():
    rows = [row + extra
            for row, extra in zip(device_rows(3, seed=21), EXTRA_VALUES)]
    return {"columns": DEVICE_COLUMNS + EXTRA_COLUMNS, "rows": rows}


class SentinelTest(FakeCloudTest):

    def setUp(self):
        super().setUp()
        self.secret_file = write_secret(self.tmp_path("secret"))

    def config(self, backend="sentinel", name=None, **kwargs):
        kwargs.setdefault("secret_file", self.secret_file)
        return write_config(self.tmp_path(name or backend + ".ini"),
                            self.fake, backend, **kwargs)

    def mdhunt(self, config, *args, now=None):
        """Run mdhunt -c CONFIG ARGS; check that no secret leaked."""
        env = {"MDHUNT_TEST_NOW": now} if now is not None else None
        result = run_mdhunt(["-c", config] + list(args), env=env)
        for name, text in (("stdout", result.stdout.decode(
                "utf-8", errors="replace")), ("stderr", result.stderr)):
            self.assertNotIn(SECRET_MARKER, text,
                             "a client secret appeared on " + name)
            self.assertNotIn(TOKEN_MARKER, text,
                             "an access token appeared on " + name)
        return result

    def hunt(self, *args, backend="sentinel", config=None):
        config = config or self.config(backend)
        return self.mdhunt(config, "hunt", *args)

    def hunt_ok(self, *args, **kwargs):
        result = self.hunt(*args, **kwargs)
        self.assertEqual(result.code, 0, result.stderr)
        return result

    def assert_fails(self, result, code, *texts):
        self.assertEqual(result.code, code, result.stderr)
        self.assertEqual(result.stdout, b"")
        for text in texts:
            self.assertIn(text, result.stderr)

    def la_requests(self):
        return self.fake.requests("loganalytics")

    def sent_body(self):
        requests = self.la_requests()
        self.assertEqual(len(requests), 1)
        return json.loads(request_body(requests[0]))


class SameResultTest(SentinelTest):

    def setUp(self):
        super().setUp()
        self.fake.set_dataset(all_types_dataset())

    def outputs(self, *args):
        return {backend: self.hunt_ok(RULE_OF[backend], *args,
                                      backend=backend).stdout
                for backend in BACKENDS}

    def test_ndjson_same_on_three_backends(self):
        outputs = self.outputs("--format", "ndjson")
        self.assertEqual(len(outputs["graph"].splitlines()), 3)
        self.assertEqual(outputs["sentinel"], outputs["graph"])
        self.assertEqual(outputs["defender"], outputs["graph"])

    def test_dynamic_json_text_becomes_value(self):
        output = self.outputs("--format", "ndjson")["sentinel"]
        rows = [json.loads(line) for line in output.splitlines()]
        self.assertEqual(rows[0]["Fields"], EXTRA_VALUES[0][5])
        self.assertEqual(rows[1]["Fields"], EXTRA_VALUES[1][5])
        self.assertEqual(rows[0]["Report"],
                         all_types_dataset()["rows"][0][4])

    def test_json_schema_types_same(self):
        docs = {backend: json.loads(text)
                for backend, text in self.outputs("--format",
                                                  "json").items()}
        schemas = {backend: [(c["name"], c["type"]) for c in doc["schema"]]
                   for backend, doc in docs.items()}
        self.assertEqual(schemas["sentinel"], schemas["graph"])
        self.assertEqual(schemas["defender"], schemas["graph"])
        self.assertEqual(docs["sentinel"]["rows"], docs["graph"]["rows"])
        kusto = [c[1] for c in DEVICE_COLUMNS + EXTRA_COLUMNS]
        self.assertEqual([c["service_type"]
                          for c in docs["sentinel"]["schema"]], kusto)
        self.assertEqual(docs["sentinel"]["backend"], "sentinel")
        self.assertFalse(docs["sentinel"]["truncated"])


class RequestTest(SentinelTest):

    def setUp(self):
        super().setUp()
        self.fake.set_dataset({"columns": DEVICE_COLUMNS,
                               "rows": device_rows(2)})

    def test_request_shape(self):
        self.hunt_ok(SENTINEL_RULE, "--format", "ndjson")
        entry = self.la_requests()[0]
        self.assertEqual(entry["method"], "POST")
        self.assertEqual(entry["path"],
                         "/v1/workspaces/%s/query" % WORKSPACE_ID)
        self.assertTrue(entry["headers"]["content-type"].startswith(
            "application/json"))
        self.assertRegex(entry["headers"]["authorization"],
                         r"^Bearer [A-Za-z0-9_-]{22}$")
        self.assertEqual(entry["status"], 200)

    def test_query_and_period_timespan_sent(self):
        self.hunt_ok(SENTINEL_RULE, "--format", "ndjson")
        body = self.sent_body()
        self.assertEqual(set(body), {"query", "timespan"})
        self.assertEqual(body["query"].encode("utf-8"),
                         expected_query(SENTINEL_RULE))
        self.assertEqual(body["timespan"], "P5D")

    def test_query_uses_time_generated(self):
        self.hunt_ok(SENTINEL_RULE, "--format", "ndjson")
        query = self.sent_body()["query"]
        self.assertIn("TimeGenerated", query)
        self.assertNotIn("Timestamp", query)

    def test_default_timespan_is_p30d(self):
        self.hunt_ok("-q", "DeviceInfo | take 1", "--format", "ndjson")
        self.assertEqual(self.sent_body()["timespan"], "P30D")

    def test_configured_default_timespan(self):
        config = self.config(extra="default_timespan = PT12H\n")
        self.hunt_ok("-q", "DeviceInfo | take 1", "--format", "ndjson",
                     config=config)
        self.assertEqual(self.sent_body()["timespan"], "PT12H")

    def test_period_wins_over_default(self):
        config = self.config(extra="default_timespan = P90D\n")
        self.hunt_ok(SENTINEL_RULE, "--format", "ndjson", config=config)
        self.assertEqual(self.sent_body()["timespan"], "P5D")

    def test_invalid_default_timespan_exits_2(self):
        config = self.config(extra="default_timespan = P1M\n")
        result = self.hunt(SENTINEL_RULE, config=config)
        self.assert_fails(result, 2, "default_timespan", "P365D")
        self.assertEqual(self.la_requests(), [])

    def test_no_prefer_within_default_wait(self):
        self.hunt_ok(SENTINEL_RULE, "--format", "ndjson")
        self.assertNotIn("prefer", self.la_requests()[0]["headers"])

    def test_prefer_wait_for_long_timeout(self):
        config = self.config(timeout=400)
        self.hunt_ok(SENTINEL_RULE, "--format", "ndjson", config=config)
        self.assertEqual(self.la_requests()[0]["headers"]["prefer"],
                         "wait=390")

    def test_prefer_wait_lets_slow_query_finish(self):
        dataset = {"columns": DEVICE_COLUMNS, "rows": device_rows(2),
                   "runtime": 300}
        self.fake.set_dataset(dataset)
        short = self.hunt(SENTINEL_RULE, "--format", "ndjson")
        self.assert_fails(short, 4, "ran out of time", "HTTP 504")
        self.hunt_ok(SENTINEL_RULE, "--format", "ndjson",
                     config=self.config(name="long.ini", timeout=400))

    def test_throttled_request_retried(self):
        self.fake.set_faults(THROTTLED_ONCE)
        result = self.hunt_ok(SENTINEL_RULE, "--format", "ndjson")
        self.assertIn("retry 1 of", result.stderr)
        self.assertEqual([e["status"] for e in self.la_requests()],
                         [429, 200])

    def test_throttled_without_retries_exits_5(self):
        self.fake.set_faults(THROTTLED_ONCE)
        config = self.config(extra="max_retries = 0\n")
        result = self.hunt(SENTINEL_RULE, config=config)
        self.assert_fails(result, 5, "throttled", "Retry-After: 1 s")
        self.assertEqual(len(self.la_requests()), 1)

    def test_gateway_timeout_not_retried(self):
        self.fake.set_faults(fault("loganalytics", count=1, status=504,
                                   error={"code": "GatewayTimeout",
                                          "message": "Query timed out"}))
        result = self.hunt(SENTINEL_RULE, "--format", "ndjson")
        self.assert_fails(result, 4, "ran out of time")
        self.assertEqual(len(self.la_requests()), 1)


class ResultTest(SentinelTest):

    def test_empty_workspace_gives_no_rows(self):
        self.fake.set_dataset({"columns": DEVICE_COLUMNS,
                               "rows": device_rows(2)})
        config = self.config(workspace_id=EMPTY_WORKSPACE_ID)
        result = self.hunt_ok(SENTINEL_RULE, "--format", "json",
                              config=config)
        doc = json.loads(result.stdout)
        self.assertEqual(doc["row_count"], 0)
        self.assertFalse(doc["truncated"])
        self.assertEqual(self.la_requests()[0]["status"], 204)

    def test_partial_result_marked_truncated(self):
        self.fake.set_dataset({"columns": DEVICE_COLUMNS,
                               "rows": device_rows(2), "partial": True})
        result = self.hunt_ok(SENTINEL_RULE, "--format", "json")
        doc = json.loads(result.stdout)
        self.assertTrue(doc["truncated"])
        self.assertEqual(doc["row_count"], 2)
        self.assertIn("partial result", result.stderr)
        self.assertIn("E_QUERY_RESULT_SET_TOO_LARGE", result.stderr)

    def test_row_limit_cut_is_partial(self):
        self.fake.set_options(la_row_limit=2)
        self.fake.set_dataset({"columns": DEVICE_COLUMNS,
                               "rows": device_rows(3)})
        result = self.hunt_ok(SENTINEL_RULE, "--format", "json")
        doc = json.loads(result.stdout)
        self.assertTrue(doc["truncated"])
        self.assertEqual(doc["row_count"], 2)
        self.assertIn("record count limit 2", result.stderr)

    def test_syntax_error_exits_4(self):
        self.fake.set_query_error("syntax")
        result = self.hunt(SENTINEL_RULE)
        self.assert_fails(result, 4, "BadArgumentError/SyntaxError",
                          "fix the KQL")


class AccessTest(SentinelTest):

    def setUp(self):
        super().setUp()
        self.fake.set_dataset({"columns": DEVICE_COLUMNS,
                               "rows": device_rows(2)})

    def test_graph_token_rejected_exits_3(self):
        config = self.config()
        with open(config, encoding="utf-8") as f:
            text = f.read()
        # A Graph token: [auth] scope names another API.
        text = text.replace("\n[api]\n", "scope = https://graph.microsoft"
                            ".com/.default\n\n[api]\n")
        with open(config, "w", encoding="utf-8") as f:
            f.write(text)
        result = self.hunt(SENTINEL_RULE, config=config)
        self.assert_fails(result, 3, "InvalidAuthenticationTokenAudience",
                          "issued for another API", "[auth] scope")
        self.assertEqual(self.la_requests()[0]["status"], 403)

    def test_unknown_workspace_exits_2(self):
        config = self.config(workspace_id=UNKNOWN_WORKSPACE_ID)
        result = self.hunt(SENTINEL_RULE, config=config)
        self.assert_fails(result, 2, "PathNotFoundError",
                          "found no workspace " + UNKNOWN_WORKSPACE_ID,
                          "[api] workspace_id")

    def test_missing_workspace_id_exits_2(self):
        config = self.config(workspace_id="")
        result = self.hunt(SENTINEL_RULE, config=config)
        self.assert_fails(result, 2, "[api] workspace_id is missing")
        self.assertEqual(self.la_requests(), [])

    def test_insufficient_access_exits_3(self):
        secret = write_secret(self.tmp_path("no-roles"), NO_ROLES_SECRET)
        config = self.config(client_id=NO_ROLES_CLIENT_ID,
                             secret_file=secret)
        result = self.hunt(SENTINEL_RULE, config=config)
        self.assert_fails(result, 3, "InsufficientAccessError",
                          "workspace " + WORKSPACE_ID,
                          "Log Analytics Reader role")


class SentinelRunTest(SentinelTest):
    """`run --once` twice per backend: the dataset gains two devices and
    loses one between the runs."""

    def run_twice(self, backend, second_rows, **dataset_keys):
        work = self.tmp_path(backend)
        rules = os.path.join(work, "rules")
        os.makedirs(rules)
        shutil.copy(RULE_OF[backend], rules)
        config = self.config(
            backend, name=backend + "-run.ini",
            extra="\n[rules]\npath = %s\n\n[store]\npath = %s\n"
                  % (rules, os.path.join(work, "mdhunt.db")))
        self.fake.set_dataset({"columns": DEVICE_COLUMNS,
                               "rows": self.first_rows})
        first = self.mdhunt(config, "run", "--once", now=T0)
        self.assertEqual(first.code, 0, first.stderr)
        self.assertIn("baseline of 3 devices", first.stderr)

        dataset = {"columns": DEVICE_COLUMNS, "rows": second_rows}
        dataset.update(dataset_keys)
        self.fake.set_dataset(dataset)
        second = self.mdhunt(config, "run", "--once", now=T0_PLUS_1D)
        self.assertEqual(second.code, 0, second.stderr)
        diff = self.mdhunt(config, "diff", "--format", "json",
                           now=T0_PLUS_1D)
        self.assertEqual(diff.code, 0, diff.stderr)
        return json.loads(diff.stdout), second.stderr

    def setUp(self):
        super().setUp()
        self.first_rows = device_rows(3, seed=31)
        self.gained = device_rows(2, seed=32)

    def test_same_diff_on_three_backends(self):
        second_rows = self.first_rows[1:] + self.gained
        summaries = {}
        for backend in BACKENDS:
            diff, _ = self.run_twice(backend, second_rows)
            summaries[backend] = (
                sorted(r["DeviceId"] for r in diff["new"]),
                sorted(r["DeviceId"] for r in diff["gone"]),
                diff["unchanged"])
        self.assertEqual(summaries["graph"],
                         (sorted(r[0] for r in self.gained),
                          [self.first_rows[0][0]], 2))
        self.assertEqual(summaries["sentinel"], summaries["graph"])
        self.assertEqual(summaries["defender"], summaries["graph"])

    def test_partial_run_reports_no_gone(self):
        second_rows = self.first_rows[1:] + self.gained
        diff, stderr = self.run_twice("sentinel", second_rows,
                                      partial=True)
        self.assertTrue(diff["run"]["truncated"])
        self.assertEqual(diff["gone"], [])
        self.assertEqual(sorted(r["DeviceId"] for r in diff["new"]),
                         sorted(r[0] for r in self.gained))
        self.assertIn("partial result", stderr)
