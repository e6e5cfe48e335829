"""Integration tests of `mdhunt hunt` against the fake cloud.

Every run goes through HuntTest.hunt(), which also checks that no client
secret and no access token reached stdout or stderr.
"""

import csv
import hashlib
import io
import json
import os
import signal
import subprocess

from harness import (DEFENDER_ROLE, EXPIRED_SECRET, FakeCloudTest,
                     GRAPH_ROLE, NO_ROLES_CLIENT_ID, NO_ROLES_SECRET, REPO,
                     SECRET, SECRET_MARKER, TOKEN_MARKER, closed_port,
                     config_text, cpu_quota_fault, device_dataset,
                     expected_query, fault, mdhunt_bin, mdhunt_env,
                     request_body, run_mdhunt, server_error_fault,
                     throttle_fault, write_config, write_secret)

RULE = os.path.join(REPO, "config", "rules",
                    "rmm-zohoassist-file-signature.yaml")
CORPUS = os.path.join(REPO, "tests", "data", "corpus", "rules")
DWSERVICE_RULE = os.path.join(CORPUS, "jischell__rmm_DWService_filesig.yaml")
BACKENDS = ("graph", "defender")
FORMULA_NAME = '=HYPERLINK("http://evil.example/","click")'


class HuntTest(FakeCloudTest):

    def setUp(self):
        super().setUp()
        self.dataset = device_dataset(3)
        self.fake.set_dataset(self.dataset)
        self.secret_file = write_secret(self.tmp_path("secret"))

    def config(self, backend="graph", **kwargs):
        kwargs.setdefault("secret_file", self.secret_file)
        return write_config(self.tmp_path("mdhunt-%s.ini" % backend),
                            self.fake, backend, **kwargs)

    def hunt(self, *args, backend="graph", config=None, env=None,
             options=()):
        """Run mdhunt [options] hunt ARGS; check no secret leaked."""
        config = config or self.config(backend)
        result = run_mdhunt(["-c", config] + list(options) + ["hunt"]
                            + list(args), env=env)
        for name, text in (("stdout", result.stdout.decode(
                "utf-8", errors="replace")), ("stderr", result.stderr)):
            self.assertNotIn(SECRET_MARKER, text,
                             "a client secret appeared on " + name)
            self.assertNotIn(TOKEN_MARKER, text,
                             "an access token appeared on " + name)
        return result

    def assert_fails(self, result, code, *texts):
        self.assertEqual(result.code, code, result.stderr)
        self.assertEqual(result.stdout, b"")
        for text in texts:
            self.assertIn(text, result.stderr)

    def ndjson_rows(self, result):
        self.assertEqual(result.code, 0, result.stderr)
        lines = result.stdout.decode("utf-8").splitlines()
        return [json.loads(line) for line in lines]

    def hunting_requests(self):
        return self.fake.requests("graph") + self.fake.requests("defender")


class HuntSuccessTest(HuntTest):

    def test_ndjson_lists_devices(self):
        expected_ids = [row[0] for row in self.dataset["rows"]]
        expected_names = [row[1] for row in self.dataset["rows"]]
        for backend in BACKENDS:
            with self.subTest(backend=backend):
                rows = self.ndjson_rows(self.hunt(
                    RULE, "--format", "ndjson", backend=backend))
                self.assertEqual([r["DeviceId"] for r in rows], expected_ids)
                self.assertEqual([r["DeviceName"] for r in rows],
                                 expected_names)
                self.assertEqual(rows[0]["Report"], self.dataset["rows"][0][4])

    def test_ndjson_same_on_both_backends(self):
        graph = self.hunt(RULE, "--format", "ndjson", backend="graph")
        defender = self.hunt(RULE, "--format", "ndjson", backend="defender")
        self.assertEqual(graph.code, 0, graph.stderr)
        self.assertEqual(defender.code, 0, defender.stderr)
        self.assertNotEqual(graph.stdout, b"")
        self.assertEqual(graph.stdout, defender.stdout)

    def test_graph_request(self):
        self.assertEqual(self.hunt(RULE, "--format", "ndjson").code, 0)
        entry = self.fake.requests("graph")[0]
        body = json.loads(request_body(entry))
        self.assertEqual(body["Query"].encode("utf-8"), expected_query(RULE))
        self.assertEqual(body["Timespan"], "P5D")
        self.assertEqual(set(body), {"Query", "Timespan"})
        self.assertTrue(entry["headers"]["content-type"].startswith(
            "application/json"))
        self.assertRegex(entry["headers"]["authorization"],
                         r"^Bearer [A-Za-z0-9_-]{22}$")
        self.assertEqual(entry["status"], 200)

    def test_defender_request(self):
        result = self.hunt(RULE, "--format", "ndjson", backend="defender")
        self.assertEqual(result.code, 0, result.stderr)
        entry = self.fake.requests("defender")[0]
        body = json.loads(request_body(entry))
        self.assertEqual(body["Query"].encode("utf-8"), expected_query(RULE))
        self.assertNotIn("Timespan", body)
        self.assertTrue(entry["headers"]["content-type"].startswith(
            "application/json"))
        self.assertRegex(entry["headers"]["authorization"],
                         r"^Bearer [A-Za-z0-9_-]{22}$")

    def test_non_ascii_query_exact(self):
        expected = expected_query(DWSERVICE_RULE)
        self.assertIn("Ü".encode("utf-8"), expected)
        for backend in BACKENDS:
            with self.subTest(backend=backend):
                self.fake.clear_requests()
                result = self.hunt(DWSERVICE_RULE, "--format", "ndjson",
                                   backend=backend)
                self.assertEqual(result.code, 0, result.stderr)
                entry = self.fake.requests(backend)[0]
                body = json.loads(request_body(entry))
                self.assertEqual(body["Query"].encode("utf-8"), expected)

    def test_query_option_sent_exactly(self):
        query = "DeviceInfo\n| where DeviceName startswith \"wks\" // ä\t"
        result = self.hunt("-q", query, "--format", "ndjson")
        self.assertEqual(result.code, 0, result.stderr)
        body = json.loads(request_body(self.fake.requests("graph")[0]))
        self.assertEqual(body["Query"], query)

    def test_one_token_request_per_command(self):
        scopes = {"graph": "https://graph.microsoft.com/.default",
                  "defender": "https://api.security.microsoft.com/.default"}
        for backend in BACKENDS:
            with self.subTest(backend=backend):
                self.fake.clear_requests()
                result = self.hunt(RULE, "--format", "ndjson",
                                   backend=backend)
                tokens = self.fake.requests("token")
                self.assertEqual(result.code, 0, result.stderr)
                self.assertEqual(len(tokens), 1)
                self.assertEqual(tokens[0]["form"]["scope"],
                                 [scopes[backend]])
                hunts = self.fake.requests(backend)
                self.assertEqual(len(hunts), 1)
                self.assertEqual(hunts[0]["headers"]["authorization"],
                                 "Bearer " + tokens[0]["issued_token"])

    def test_config_from_environment(self):
        config = self.config()
        result = run_mdhunt(["hunt", RULE, "--format", "ndjson"],
                            env={"MDHUNT_CONFIG": config})
        self.assertEqual(len(self.ndjson_rows(result)), 3)

    def test_secret_from_environment(self):
        config = self.config(secret_file=None)
        result = self.hunt(RULE, "--format", "ndjson", config=config,
                           env={"MDHUNT_CLIENT_SECRET": SECRET},
                           options=["-v", "-v"])
        self.assertEqual(len(self.ndjson_rows(result)), 3)

    def test_verbose_success_keeps_secrets(self):
        # hunt() checks the output for the secret and the token.
        result = self.hunt(RULE, "--format", "ndjson", options=["-v", "-v"])
        self.assertEqual(result.code, 0, result.stderr)

    def test_table_lists_devices(self):
        result = self.hunt(RULE)
        text = result.stdout.decode("utf-8")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("DeviceName", text.splitlines()[0])
        for row in self.dataset["rows"]:
            self.assertIn(row[1], text)
        self.assertIn("3 rows", text)

    def test_json_document(self):
        result = self.hunt(RULE, "--format", "json")
        self.assertEqual(result.code, 0, result.stderr)
        doc = json.loads(result.stdout)
        self.assertEqual(doc["format"], "mdhunt.result/1")
        self.assertIs(doc["truncated"], False)
        self.assertEqual(doc["backend"], "graph")
        self.assertEqual(doc["query_sha256"],
                         hashlib.sha256(expected_query(RULE)).hexdigest())
        self.assertEqual(len(doc["rows"]), 3)

    def test_json_truncated_at_row_limit(self):
        self.fake.set_dataset(device_dataset(3, expand_to=100001),
                              name="big")
        result = self.hunt(RULE, "--format", "json", backend="defender")
        self.assertEqual(result.code, 0, result.stderr)
        doc = json.loads(result.stdout)
        self.assertEqual(doc["format"], "mdhunt.result/1")
        self.assertIs(doc["truncated"], True)
        self.assertEqual(doc["row_count"], 100000)
        self.assertEqual(len(doc["rows"]), 100000)
        self.assertIn("truncated", result.stderr)

    def test_csv_neutralises_formula(self):
        self.fake.set_dataset(device_dataset(2, names=[FORMULA_NAME]),
                              name="formula")
        result = self.hunt(RULE, "--format", "csv")
        self.assertEqual(result.code, 0, result.stderr)
        rows = list(csv.reader(io.StringIO(result.stdout.decode("utf-8"),
                                           newline="")))
        names = rows[0].index("DeviceName")
        self.assertEqual(rows[1][names], "'" + FORMULA_NAME)
        self.assertEqual(rows[2][names], self.fake.state["datasets"][
            "formula"]["rows"][1][1])

    def test_csv_raw_keeps_formula(self):
        self.fake.set_dataset(device_dataset(1, names=[FORMULA_NAME]),
                              name="formula")
        result = self.hunt(RULE, "--format", "csv", "--csv-raw")
        self.assertEqual(result.code, 0, result.stderr)
        rows = list(csv.reader(io.StringIO(result.stdout.decode("utf-8"),
                                           newline="")))
        self.assertEqual(rows[1][rows[0].index("DeviceName")], FORMULA_NAME)

    def test_closed_pipe_is_quiet(self):
        # Enough rows that the table outgrows the pipe buffer after head
        # has exited.
        self.fake.set_dataset(device_dataset(3, expand_to=5000), name="many")
        command = [mdhunt_bin(), "-c", self.config(), "hunt", RULE]
        head = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        try:
            mdhunt = subprocess.run(command, cwd=REPO, env=mdhunt_env(),
                                    stdin=subprocess.DEVNULL,
                                    stdout=head.stdin,
                                    stderr=subprocess.PIPE, timeout=60)
        finally:
            head.stdin.close()
            first_line = head.stdout.read()
            head.wait(10)
        self.assertIn(b"DeviceName", first_line)
        self.assertEqual(mdhunt.stderr.decode("utf-8", "replace"), "")
        self.assertIn(mdhunt.returncode, (0, -signal.SIGPIPE))


class HuntAuthTest(HuntTest):

    def assert_auth_fails(self, code_text, backend="graph", **config):
        result = self.hunt(RULE, backend=backend,
                           config=self.config(backend, **config))
        self.assert_fails(result, 3, code_text)
        return result

    def test_wrong_secret(self):
        secret = write_secret(self.tmp_path("wrong"), "S3cr3t-CANARY-bad")
        self.assert_auth_fails("AADSTS7000215", secret_file=secret)
        self.assertEqual(self.hunting_requests(), [])

    def test_wrong_secret_verbose(self):
        secret = write_secret(self.tmp_path("wrong"), "S3cr3t-CANARY-bad")
        result = self.hunt(RULE, options=["-v", "-v"],
                           config=self.config(secret_file=secret))
        self.assert_fails(result, 3, "AADSTS7000215")

    def test_expired_secret(self):
        secret = write_secret(self.tmp_path("old"), EXPIRED_SECRET)
        self.assert_auth_fails("AADSTS7000222", secret_file=secret)

    def test_unknown_client(self):
        self.assert_auth_fails(
            "AADSTS700016",
            client_id="0f0e0d0c-0b0a-4909-8807-060504030201")

    def test_unknown_tenant(self):
        self.assert_auth_fails(
            "AADSTS90002", tenant="00000000-1111-4222-8333-444444444444")

    def test_missing_graph_role(self):
        secret = write_secret(self.tmp_path("noroles"), NO_ROLES_SECRET)
        self.assert_auth_fails(GRAPH_ROLE, client_id=NO_ROLES_CLIENT_ID,
                               secret_file=secret)

    def test_missing_defender_role(self):
        secret = write_secret(self.tmp_path("noroles"), NO_ROLES_SECRET)
        self.assert_auth_fails(DEFENDER_ROLE, backend="defender",
                               client_id=NO_ROLES_CLIENT_ID,
                               secret_file=secret)


class HuntQueryErrorTest(HuntTest):

    def test_query_errors_exit_4(self):
        texts = {"syntax": "A recognition error occurred",
                 "too_large": "exceeded the allowed result size",
                 "preempted": "The query execution was preempted"}
        for backend in BACKENDS:
            messages = {}
            for kind, text in texts.items():
                with self.subTest(backend=backend, kind=kind):
                    self.fake.reset()
                    self.fake.set_query_error(kind)
                    result = self.hunt(RULE, backend=backend)
                    self.assert_fails(result, 4, text)
                    messages[kind] = result.stderr
            with self.subTest(backend=backend, check="distinct"):
                self.assertEqual(len(set(messages.values())), len(texts))


class HuntUnavailableTest(HuntTest):

    def assert_unavailable(self, backend="graph", *texts, **config):
        result = self.hunt(RULE, backend=backend,
                           config=self.config(backend, **config))
        self.assert_fails(result, 5, *texts)
        return result

    def test_throttled(self):
        for backend in BACKENDS:
            with self.subTest(backend=backend):
                self.fake.set_faults(throttle_fault(backend, retry_after=1))
                self.assert_unavailable(backend)

    def test_cpu_quota(self):
        for backend in BACKENDS:
            with self.subTest(backend=backend):
                self.fake.set_faults(cpu_quota_fault(backend))
                self.assert_unavailable(backend)

    def test_server_error(self):
        for backend in BACKENDS:
            with self.subTest(backend=backend):
                self.fake.set_faults(server_error_fault(backend))
                self.assert_unavailable(backend)

    def test_token_endpoint_unavailable(self):
        self.fake.set_faults(fault("token", status=503,
                                   body_text="Service Unavailable"))
        self.assert_unavailable()

    def test_non_json_reply(self):
        for backend in BACKENDS:
            with self.subTest(backend=backend):
                self.fake.set_faults(fault(
                    backend, status=200,
                    body_text="<html><body>Sign in</body></html>"))
                self.assert_unavailable(backend)

    def test_truncated_reply(self):
        for backend in BACKENDS:
            with self.subTest(backend=backend):
                self.fake.set_faults(fault(backend, truncate=True))
                self.assert_unavailable(backend)

    def test_slow_reply(self):
        self.fake.set_faults(fault("graph", delay=3))
        self.assert_unavailable("graph", timeout=1)

    def test_wrong_ca(self):
        result = self.assert_unavailable(ca_file=self.fake.other_ca_file)
        self.assertIn("certificate", result.stderr.lower())

    def test_connection_refused(self):
        url = "https://127.0.0.1:%d" % closed_port()
        self.assert_unavailable(url=url, authority_url=url)


class HuntUsageTest(HuntTest):

    def test_config_error_names_line(self):
        path = self.tmp_path("bad.ini")
        text = config_text(self.fake, "graph", secret_file=self.secret_file)
        text += "no_such_key = 1\n"
        line = text.count("\n")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        result = self.hunt(RULE, config=path)
        self.assert_fails(result, 2, "%s:%d" % (path, line))
        self.assertEqual(self.fake.requests(), [])

    def test_unknown_backend(self):
        path = self.config(secret_file=self.secret_file)
        with open(path, encoding="utf-8") as f:
            text = f.read().replace("backend = graph", "backend = splunk")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        result = self.hunt(RULE, config=path)
        self.assert_fails(result, 2, path, "splunk")

    def test_bad_rule(self):
        path = self.tmp_path("broken.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write("id: 5b0c6a43-7c9e-4f6b-9d0a-2e8f1c3b4a59\n"
                    "name: no query here\n")
        result = self.hunt(path)
        self.assert_fails(result, 2, path)
        self.assertEqual(self.fake.requests(), [])

    def test_missing_rule_file(self):
        path = self.tmp_path("absent.yaml")
        result = self.hunt(path)
        self.assert_fails(result, 2, path)

    def test_unknown_option(self):
        result = self.hunt(RULE, "--no-such-option")
        self.assert_fails(result, 2, "--no-such-option")
        self.assertEqual(self.fake.requests(), [])

    def test_unknown_format(self):
        result = self.hunt(RULE, "--format", "xml")
        self.assert_fails(result, 2, "xml")
