"""Integration tests of `mdhunt auth check` against the fake cloud."""

from harness import (CLIENT_ID, DEFENDER_ROLE, GRAPH_ROLE,
                     NO_ROLES_CLIENT_ID, NO_ROLES_SECRET, SECRET_MARKER,
                     TENANT_ID, TOKEN_MARKER, FakeCloudTest,
                     client_certificate, run_mdhunt, write_config,
                     write_secret)


def fields(stdout):
    """The "name: value" lines of the output, as a dict."""
    result = {}
    for line in stdout.decode("utf-8").splitlines():
        name, _, value = line.partition(":")
        result[name] = value.strip()
    return result


class AuthCheckTest(FakeCloudTest):

    def setUp(self):
        super().setUp()
        self.secret_file = write_secret(self.tmp_path("secret"))

    def check(self, backend="graph", **kwargs):
        kwargs.setdefault("secret_file", self.secret_file)
        config = write_config(self.tmp_path("mdhunt.ini"), self.fake,
                              backend, **kwargs)
        result = run_mdhunt(["-c", config, "auth", "check"])
        issued = [e["issued_token"] for e in self.fake.requests("token")]
        for text in (result.stdout.decode("utf-8", "replace"),
                     result.stderr):
            self.assertNotIn(SECRET_MARKER, text)
            self.assertNotIn(TOKEN_MARKER, text)
            for token_id in filter(None, issued):
                self.assertNotIn(token_id, text)
        return result

    def test_graph_permission_granted(self):
        result = self.check()
        self.assertEqual(result.code, 0, result.stderr)
        out = fields(result.stdout)
        self.assertEqual(out["tenant"], TENANT_ID)
        self.assertEqual(out["application"], CLIENT_ID)
        self.assertEqual(out["audience"], "https://graph.microsoft.com")
        self.assertEqual(out["roles"], GRAPH_ROLE)
        self.assertEqual(out["credential"], "client secret")
        self.assertRegex(out["expires"],
                         r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in 59 min\)$")
        self.assertTrue(out["needs"].startswith(GRAPH_ROLE))
        self.assertEqual(out["permission"], "granted")

    def test_only_a_token_request(self):
        self.assertEqual(self.check().code, 0)
        endpoints = [e["endpoint"] for e in self.fake.requests()]
        self.assertEqual(endpoints, ["token"])

    def test_defender_permission_granted(self):
        result = self.check("defender")
        self.assertEqual(result.code, 0, result.stderr)
        out = fields(result.stdout)
        self.assertEqual(out["roles"], DEFENDER_ROLE)
        self.assertEqual(out["audience"],
                         "https://api.security.microsoft.com")
        self.assertEqual(out["permission"], "granted")

    def test_missing_permission_exits_3(self):
        secret = write_secret(self.tmp_path("noroles"), NO_ROLES_SECRET)
        result = self.check(client_id=NO_ROLES_CLIENT_ID,
                            secret_file=secret)
        self.assertEqual(result.code, 3, result.stderr)
        out = fields(result.stdout)
        self.assertEqual(out["roles"], "(none)")
        self.assertEqual(out["permission"], "missing")
        self.assertIn(GRAPH_ROLE, result.stderr)
        self.assertIn("admin consent", result.stderr)

    def test_role_of_other_api_is_missing(self):
        self.fake.state["apps"][0]["roles"] = {
            "https://api.security.microsoft.com": [DEFENDER_ROLE]}
        self.fake.write_state()
        result = self.check("graph")
        self.assertEqual(result.code, 3, result.stderr)
        self.assertEqual(fields(result.stdout)["permission"], "missing")

    def test_certificate_credential_named(self):
        cert = client_certificate(self.tmp)
        self.fake.add_certificate(cert)
        result = self.check(secret_file=None,
                            certificate_file=cert["cert_file"],
                            private_key_file=cert["key_file"])
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(fields(result.stdout)["credential"],
                         "certificate with SHA-1 thumbprint %s (PS256)"
                         % cert["sha1"])

    def test_rejected_secret_exits_3(self):
        secret = write_secret(self.tmp_path("wrong"), "S3cr3t-CANARY-bad")
        result = self.check(secret_file=secret)
        self.assertEqual(result.code, 3, result.stderr)
        self.assertIn("AADSTS7000215", result.stderr)
        self.assertEqual(result.stdout, b"")

    def test_usage_errors_exit_2(self):
        config = write_config(self.tmp_path("mdhunt.ini"), self.fake,
                              "graph", secret_file=self.secret_file)
        for args in (["auth"], ["auth", "show"], ["auth", "check", "x"]):
            with self.subTest(args=args):
                result = run_mdhunt(["-c", config] + args)
                self.assertEqual(result.code, 2, result.stderr)
        self.assertEqual(self.fake.requests(), [])

    def test_help(self):
        result = run_mdhunt(["auth", "--help"])
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn(b"mdhunt auth check", result.stdout)
