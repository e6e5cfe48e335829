"""Self-tests of the fake cloud through direct HTTPS requests.

These pin down the wire formats and the strictness that the mdhunt tests
rely on: token errors, hunting reply shapes, faults and the request log.
"""

import base64
import hashlib
import http.client
import json
import os
import ssl
import time
import urllib.parse

from harness import (CLIENT_ID, DEFENDER_ROLE, EXPIRED_SECRET,
                     FakeCloudTest, GRAPH_ROLE, NO_ROLES_CLIENT_ID,
                     NO_ROLES_SECRET, SECRET, TENANT_DOMAIN, TENANT_ID,
                     TOKEN_MARKER, device_dataset, fault, request_body,
                     server_error_fault, throttle_fault)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
DEFENDER_SCOPE = "https://api.security.microsoft.com/.default"
GRAPH_PATH = "/v1.0/security/runHuntingQuery"
DEFENDER_PATH = "/api/advancedhunting/run"
FORM = "application/x-www-form-urlencoded"
GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
DESCRIPTION_RE = (r"AADSTS%d: .+\r\nTrace ID: " + GUID
                  + r"\r\nCorrelation ID: " + GUID
                  + r"\r\nTimestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ")
DATETIME7_RE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$"
ENTRA_KEYS = {"error", "error_description", "error_codes", "timestamp",
              "trace_id", "correlation_id", "error_uri"}


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


class FakeTest(FakeCloudTest):
    """Helpers to talk to the fake directly."""

    def send(self, method, path, body=b"", headers=None, cafile=None,
             host="127.0.0.1"):
        context = ssl.create_default_context(
            cafile=cafile or self.fake.ca_file)
        conn = http.client.HTTPSConnection(host, self.fake.port,
                                           context=context, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            reply = conn.getresponse()
            return Response(reply.status, reply.headers, reply.read())
        finally:
            conn.close()

    def token_request(self, fields, tenant=TENANT_ID, version="v2.0",
                      headers=None):
        path = ("/%s/oauth2/%s/token" % (tenant, version) if version
                else "/%s/oauth2/token" % tenant)
        all_headers = {"Content-Type": FORM}
        all_headers.update(headers or {})
        return self.send("POST", path, urllib.parse.urlencode(fields),
                         all_headers)

    def token_fields(self, **changes):
        fields = {"grant_type": "client_credentials", "client_id": CLIENT_ID,
                  "client_secret": SECRET, "scope": GRAPH_SCOPE}
        for key, value in changes.items():
            if value is None:
                fields.pop(key, None)
            else:
                fields[key] = value
        return fields

    def token(self, scope=GRAPH_SCOPE, client_id=CLIENT_ID, secret=SECRET):
        reply = self.token_request(self.token_fields(
            scope=scope, client_id=client_id, client_secret=secret))
        self.assertEqual(reply.status, 200, reply.body)
        return reply.json()["access_token"]

    def hunt(self, endpoint, body, token=None, content_type=None,
             method="POST", headers=None):
        path = GRAPH_PATH if endpoint == "graph" else DEFENDER_PATH
        all_headers = {"Content-Type": content_type or "application/json"}
        if token is not None:
            all_headers["Authorization"] = "Bearer " + token
        all_headers.update(headers or {})
        if not isinstance(body, bytes):
            body = json.dumps(body).encode("utf-8")
        return self.send(method, path, body, all_headers)

    def assert_entra_error(self, reply, status, error, code):
        self.assertEqual(reply.status, status, reply.body)
        body = reply.json()
        self.assertEqual(set(body), ENTRA_KEYS)
        self.assertEqual(body["error"], error)
        self.assertEqual(body["error_codes"], [code])
        self.assertRegex(body["error_description"], DESCRIPTION_RE % code)
        self.assertRegex(body["timestamp"],
                         r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$")
        self.assertIn("Trace ID: " + body["trace_id"],
                      body["error_description"])
        self.assertTrue(body["error_uri"].endswith("?code=%d" % code))
        return body

    def assert_graph_error(self, reply, status, code):
        self.assertEqual(reply.status, status, reply.body)
        error = reply.json()["error"]
        self.assertEqual(error["code"], code)
        self.assertEqual(set(error["innerError"]),
                         {"date", "request-id", "client-request-id"})
        self.assertRegex(error["innerError"]["date"],
                         r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
        return error

    def assert_defender_error(self, reply, status, code):
        self.assertEqual(reply.status, status, reply.body)
        error = reply.json()["error"]
        self.assertEqual(set(error), {"code", "message", "target"})
        self.assertEqual(error["code"], code)
        self.assertRegex(error["target"], r"^\|[0-9a-f]{8}-[0-9a-f]{16}\.$")
        return error


class TokenEndpointTest(FakeTest):

    def test_v2_success_shape(self):
        reply = self.token_request(self.token_fields())
        body = reply.json()
        self.assertEqual(reply.status, 200)
        self.assertEqual(set(body), {"token_type", "expires_in",
                                     "ext_expires_in", "access_token"})
        self.assertEqual(body["token_type"], "Bearer")
        self.assertEqual(body["expires_in"], 3599)
        self.assertEqual(body["ext_expires_in"], 3599)
        self.assertEqual(len(body["access_token"].split(".")), 3)
        self.assertIn(TOKEN_MARKER, body["access_token"])

    def test_v2_tenant_by_domain(self):
        reply = self.token_request(self.token_fields(), tenant=TENANT_DOMAIN)
        self.assertEqual(reply.status, 200, reply.body)

    def test_v1_numbers_are_strings(self):
        fields = self.token_fields(scope=None,
                                   resource="https://graph.microsoft.com")
        reply = self.token_request(fields, version=None)
        body = reply.json()
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(body["expires_in"], "3599")
        self.assertEqual(body["resource"], "https://graph.microsoft.com")
        self.assertEqual(int(body["expires_on"]) - int(body["not_before"]),
                         3599)

    def test_v1_endpoint_can_be_disabled(self):
        self.fake.set_options(v1_token_endpoint=False)
        fields = self.token_fields(scope=None,
                                   resource="https://graph.microsoft.com")
        reply = self.token_request(fields, version=None)
        self.assertEqual(reply.status, 404)

    def test_wrong_secret(self):
        reply = self.token_request(self.token_fields(
            client_secret="S3cr3t-CANARY-wrong"))
        body = self.assert_entra_error(reply, 401, "invalid_client", 7000215)
        self.assertIn(CLIENT_ID, body["error_description"])

    def test_secret_must_be_form_encoded(self):
        # "+" unencoded decodes to a space, so the secret no longer matches.
        raw = ("grant_type=client_credentials&client_id=%s&client_secret=%s"
               "&scope=%s" % (CLIENT_ID, SECRET,
                              urllib.parse.quote(GRAPH_SCOPE, safe="")))
        reply = self.send("POST", "/%s/oauth2/v2.0/token" % TENANT_ID, raw,
                          {"Content-Type": FORM})
        self.assert_entra_error(reply, 401, "invalid_client", 7000215)

    def test_expired_secret(self):
        reply = self.token_request(self.token_fields(
            client_secret=EXPIRED_SECRET))
        self.assert_entra_error(reply, 401, "invalid_client", 7000222)

    def test_missing_secret(self):
        reply = self.token_request(self.token_fields(client_secret=None))
        self.assert_entra_error(reply, 401, "invalid_client", 7000218)

    def test_unknown_client(self):
        other = "11111111-2222-3333-4444-555555555555"
        reply = self.token_request(self.token_fields(client_id=other))
        body = self.assert_entra_error(reply, 400, "unauthorized_client",
                                       700016)
        self.assertIn(other, body["error_description"])

    def test_client_of_other_tenant(self):
        self.fake.state["tenants"].append(
            {"id": "99999999-8888-7777-6666-555555555555",
             "domains": ["fabrikam.onmicrosoft.com"]})
        self.fake.write_state()
        reply = self.token_request(self.token_fields(),
                                   tenant="fabrikam.onmicrosoft.com")
        self.assert_entra_error(reply, 400, "unauthorized_client", 700016)

    def test_unknown_tenant_guid(self):
        reply = self.token_request(
            self.token_fields(),
            tenant="00000000-1111-2222-3333-444444444444")
        self.assert_entra_error(reply, 400, "invalid_tenant", 90002)

    def test_unknown_tenant_domain(self):
        reply = self.token_request(self.token_fields(),
                                   tenant="nosuch.onmicrosoft.com")
        self.assert_entra_error(reply, 400, "invalid_tenant", 90002)

    def test_malformed_tenant(self):
        reply = self.token_request(self.token_fields(), tenant="not_a-tenant")
        self.assert_entra_error(reply, 400, "invalid_request", 900023)

    def test_common_endpoints_rejected(self):
        for tenant in ("common", "consumers", "organizations"):
            with self.subTest(tenant=tenant):
                reply = self.token_request(self.token_fields(), tenant=tenant)
                self.assert_entra_error(reply, 400, "invalid_request",
                                        9001023)

    def test_invalid_scopes(self):
        scopes = [
            "https://graph.microsoft.com",
            "https://graph.microsoft.com/ThreatHunting.Read.All",
            "https://unknown.example.com/.default",
            GRAPH_SCOPE + " " + DEFENDER_SCOPE,
        ]
        for scope in scopes:
            with self.subTest(scope=scope):
                reply = self.token_request(self.token_fields(scope=scope))
                self.assert_entra_error(reply, 400, "invalid_scope", 70011)

    def test_resource_rejected_on_v2(self):
        reply = self.token_request(self.token_fields(
            resource="https://graph.microsoft.com"))
        self.assert_entra_error(reply, 400, "invalid_request", 901002)

    def test_missing_fields(self):
        for name in ("grant_type", "client_id", "scope"):
            with self.subTest(field=name):
                reply = self.token_request(self.token_fields(**{name: None}))
                body = self.assert_entra_error(reply, 400, "invalid_request",
                                               900144)
                self.assertIn("'%s'" % name, body["error_description"])

    def test_unsupported_grant_type(self):
        reply = self.token_request(self.token_fields(grant_type="password"))
        self.assert_entra_error(reply, 400, "unsupported_grant_type", 70003)

    def test_get_rejected(self):
        reply = self.send("GET", "/%s/oauth2/v2.0/token" % TENANT_ID)
        self.assert_entra_error(reply, 400, "invalid_request", 900561)

    def test_json_body_rejected(self):
        reply = self.send("POST", "/%s/oauth2/v2.0/token" % TENANT_ID,
                          json.dumps(self.token_fields()),
                          {"Content-Type": "application/json"})
        self.assert_entra_error(reply, 400, "invalid_request", 900144)

    def test_repeated_field_rejected(self):
        body = urllib.parse.urlencode(self.token_fields()) + "&scope=x"
        reply = self.send("POST", "/%s/oauth2/v2.0/token" % TENANT_ID, body,
                          {"Content-Type": FORM})
        self.assertEqual(reply.status, 400)

    def test_client_request_id_is_correlation_id(self):
        sent = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
        reply = self.token_request(
            self.token_fields(client_secret="wrong"),
            headers={"client-request-id": sent})
        body = reply.json()
        self.assertEqual(body["correlation_id"], sent)
        self.assertEqual(reply.headers["client-request-id"], sent)

    def test_basic_authentication(self):
        credentials = "%s:%s" % (urllib.parse.quote_plus(CLIENT_ID),
                                 urllib.parse.quote_plus(SECRET))
        header = "Basic " + base64.b64encode(credentials.encode()).decode()
        fields = self.token_fields(client_id=None, client_secret=None)
        reply = self.token_request(fields, headers={"Authorization": header})
        self.assertEqual(reply.status, 200, reply.body)

    def test_expires_in_string_fault(self):
        self.fake.set_faults(fault("token", 1,
                                   token={"expires_in_string": True}))
        first = self.token_request(self.token_fields()).json()
        second = self.token_request(self.token_fields()).json()
        self.assertEqual(first["expires_in"], "3599")
        self.assertEqual(second["expires_in"], 3599)

    def test_short_lifetime_fault(self):
        self.fake.set_faults(fault("token", token={"lifetime": 30}))
        body = self.token_request(self.token_fields()).json()
        self.assertEqual(body["expires_in"], 30)

    def test_log_redacts_secret(self):
        self.token_request(self.token_fields())
        entry = self.fake.requests("token")[0]
        with open(self.fake.path("requests.jsonl"), encoding="utf-8") as f:
            log = f.read()
        self.assertEqual(entry["form"]["client_secret"], ["<redacted>"])
        self.assertEqual(entry["status"], 200)
        self.assertNotIn("CANARY", log)

    def test_log_redacts_basic_credentials(self):
        credentials = "%s:%s" % (CLIENT_ID, urllib.parse.quote_plus(SECRET))
        header = "Basic " + base64.b64encode(credentials.encode()).decode()
        self.token_request(self.token_fields(client_secret=None),
                           headers={"Authorization": header})
        entry = self.fake.requests("token")[0]
        self.assertEqual(entry["headers"]["authorization"],
                         "Basic <redacted>")

    def test_no_roles_app_gets_token(self):
        token = self.token(client_id=NO_ROLES_CLIENT_ID,
                           secret=NO_ROLES_SECRET)
        claims = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(claims + "=="))
        self.assertEqual(claims["roles"], [])
        self.assertEqual(claims["aud"], "https://graph.microsoft.com")


ALL_TYPES = {
    "columns": [["When", "datetime"], ["Name", "string"], ["Big", "long"],
                ["Small", "int"], ["Flag", "bool"], ["Ratio", "real"],
                ["Bag", "dynamic"], ["Id", "guid"], ["Span", "timespan"]],
    "rows": [["2025-03-01T12:00:00Z", "host1", 5000000000, 7, True, 0.5,
              {"a": [1, 2]}, "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
              "01:02:03"],
             ["2025-03-01T12:00:00.12Z", None, None, None, None, None,
              None, None, None]],
}


class HuntingTest(FakeTest):

    def setUp(self):
        super().setUp()
        self.fake.set_dataset(device_dataset(3))

    def test_graph_success_shape(self):
        reply = self.hunt("graph", {"Query": "DeviceInfo", "Timespan": "P5D"},
                          self.token())
        body = reply.json()
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(set(body), {"@odata.context", "schema", "results"})
        self.assertEqual(body["@odata.context"],
                         "https://graph.microsoft.com/v1.0/$metadata#"
                         "microsoft.graph.security.huntingQueryResults")
        self.assertEqual(body["schema"][0], {"name": "DeviceId",
                                             "type": "String"})
        self.assertEqual(len(body["results"]), 3)
        self.assertRegex(body["results"][0]["FirstSeen"], DATETIME7_RE)
        self.assertIsInstance(body["results"][0]["Report"], list)
        self.assertRegex(reply.headers["request-id"], "^" + GUID + "$")
        self.assertIsNotNone(reply.headers["client-request-id"])
        self.assertIsNotNone(reply.headers["Date"])

    def test_graph_pascal_schema_option(self):
        self.fake.set_options(graph_schema_keys="pascal")
        body = self.hunt("graph", {"Query": "x"}, self.token()).json()
        self.assertEqual(body["schema"][0], {"Name": "DeviceId",
                                             "Type": "String"})

    def test_type_names_and_values(self):
        self.fake.set_dataset(ALL_TYPES, name="types")
        body = self.hunt("graph", {"Query": "x"}, self.token()).json()
        types = [column["type"] for column in body["schema"]]
        first, second = body["results"]
        self.assertEqual(types, ["DateTime", "String", "Int64", "Int32",
                                 "Boolean", "Double", "Dynamic", "Guid",
                                 "TimeSpan"])
        self.assertEqual(first["When"], "2025-03-01T12:00:00.0000000Z")
        self.assertEqual(second["When"], "2025-03-01T12:00:00.1200000Z")
        self.assertEqual(first["Big"], 5000000000)
        self.assertIs(first["Flag"], True)
        self.assertEqual(first["Bag"], {"a": [1, 2]})
        self.assertIsNone(second["Name"])

    def test_graph_lower_case_keys(self):
        reply = self.hunt("graph", {"query": "x", "timespan": "P1D"},
                          self.token())
        self.assertEqual(reply.status, 200, reply.body)

    def test_graph_charset_accepted(self):
        reply = self.hunt("graph", {"Query": "x"}, self.token(),
                          content_type="application/json; charset=utf-8")
        self.assertEqual(reply.status, 200, reply.body)

    def test_graph_wrong_content_type(self):
        for content_type in ("text/plain", FORM,
                             "application/json; charset=latin-1"):
            with self.subTest(content_type=content_type):
                reply = self.hunt("graph", {"Query": "x"}, self.token(),
                                  content_type=content_type)
                self.assert_graph_error(reply, 415, "UnsupportedMediaType")

    def test_graph_bad_bodies(self):
        bodies = [b"{not json", b"[]", b'{"Timespan": "P1D"}',
                  b'{"Query": 5}', b'{"Query": ""}',
                  b'{"QUERY": "x"}', b'{"Query": "x", "query": "y"}',
                  b'{"Query": "x", "Top": 5}', b'{"Query": NaN}']
        token = self.token()
        for body in bodies:
            with self.subTest(body=body):
                reply = self.hunt("graph", body, token)
                self.assert_graph_error(reply, 400, "BadRequest")

    def test_graph_timespan_forms(self):
        good = ["P30D", "PT1H", "P1DT12H", "P1W", "2025-03-01T00:00:00Z",
                "2025-03-01T00:00:00Z/2025-03-02T00:00:00Z",
                "P5D/2025-03-02T00:00:00Z", "2025-03-01/P5D",
                "2025-03-01T00:00:00.1234567+02:00/P1D"]
        bad = ["5d", "P", "PT", "P5", "1.00:00:00", "P5D/P1D",
               "2025-03-02T00:00:00Z/2025-03-01T00:00:00Z",
               "2025-13-01", "a/b/c", "", 5]
        token = self.token()
        for timespan in good:
            with self.subTest(timespan=timespan):
                reply = self.hunt("graph", {"Query": "x",
                                            "Timespan": timespan}, token)
                self.assertEqual(reply.status, 200, reply.body)
        for timespan in bad:
            with self.subTest(timespan=timespan):
                reply = self.hunt("graph", {"Query": "x",
                                            "Timespan": timespan}, token)
                self.assert_graph_error(reply, 400, "BadRequest")

    def test_graph_wrong_audience(self):
        reply = self.hunt("graph", {"Query": "x"}, self.token(DEFENDER_SCOPE))
        error = self.assert_graph_error(reply, 401,
                                        "InvalidAuthenticationToken")
        self.assertIn("audience", error["message"])

    def test_graph_missing_token(self):
        reply = self.hunt("graph", {"Query": "x"})
        self.assert_graph_error(reply, 401, "InvalidAuthenticationToken")

    def test_graph_unknown_token(self):
        reply = self.hunt("graph", {"Query": "x"}, "eyJ0.eyJ1.c2ln")
        self.assert_graph_error(reply, 401, "InvalidAuthenticationToken")

    def test_graph_revoked_token(self):
        token = self.token()
        self.fake.revoke_tokens()
        reply = self.hunt("graph", {"Query": "x"}, token)
        self.assert_graph_error(reply, 401, "InvalidAuthenticationToken")

    def test_graph_token_expired_on_issue(self):
        self.fake.set_faults(fault("token", 1,
                                   token={"expired_on_issue": True}))
        reply = self.hunt("graph", {"Query": "x"}, self.token())
        error = self.assert_graph_error(reply, 401,
                                        "InvalidAuthenticationToken")
        self.assertIn("expired", error["message"])

    def test_graph_missing_role(self):
        token = self.token(client_id=NO_ROLES_CLIENT_ID,
                           secret=NO_ROLES_SECRET)
        reply = self.hunt("graph", {"Query": "x"}, token)
        error = self.assert_graph_error(reply, 403, "Forbidden")
        self.assertIn(GRAPH_ROLE, error["message"])

    def test_graph_get_rejected(self):
        reply = self.hunt("graph", b"", self.token(), method="GET")
        self.assert_graph_error(reply, 405, "MethodNotAllowed")

    def test_defender_success_shape(self):
        reply = self.hunt("defender", {"Query": "x"},
                          self.token(DEFENDER_SCOPE))
        body = reply.json()
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(set(body), {"Stats", "Schema", "Results"})
        self.assertEqual(body["Schema"][2], {"Name": "FirstSeen",
                                             "Type": "DateTime"})
        self.assertIn("total cpu", body["Stats"]["resource_usage"]["cpu"])
        self.assertEqual(len(body["Results"]), 3)

    def test_same_rows_on_both_backends(self):
        graph = self.hunt("graph", {"Query": "x"}, self.token()).json()
        defender = self.hunt("defender", {"Query": "x"},
                             self.token(DEFENDER_SCOPE)).json()
        self.assertEqual(graph["results"], defender["Results"])

    def test_defender_key_case(self):
        reply = self.hunt("defender", {"query": "x"},
                          self.token(DEFENDER_SCOPE))
        error = self.assert_defender_error(reply, 400, "InvalidRequestBody")
        self.assertEqual(error["message"], "Missing query.")

    def test_defender_rejects_timespan(self):
        reply = self.hunt("defender", {"Query": "x", "Timespan": "P1D"},
                          self.token(DEFENDER_SCOPE))
        error = self.assert_defender_error(reply, 400, "InvalidRequestBody")
        self.assertIn("Timespan", error["message"])

    def test_defender_raw_newline_rejected(self):
        reply = self.hunt("defender", b'{"Query": "a\nb"}',
                          self.token(DEFENDER_SCOPE))
        self.assert_defender_error(reply, 400, "InvalidRequestBody")

    def test_defender_wrong_audience(self):
        reply = self.hunt("defender", {"Query": "x"}, self.token())
        self.assert_defender_error(reply, 401, "Unauthorized")

    def test_defender_missing_role(self):
        token = self.token(DEFENDER_SCOPE, NO_ROLES_CLIENT_ID,
                           NO_ROLES_SECRET)
        reply = self.hunt("defender", {"Query": "x"}, token)
        error = self.assert_defender_error(reply, 403, "Forbidden")
        self.assertIn(DEFENDER_ROLE, error["message"])

    def test_defender_wrong_content_type(self):
        reply = self.hunt("defender", {"Query": "x"},
                          self.token(DEFENDER_SCOPE),
                          content_type="text/plain")
        self.assert_defender_error(reply, 415, "UnsupportedMediaType")

    def test_dataset_by_substring_and_hash(self):
        other = device_dataset(1, seed=7)
        self.fake.set_dataset(other, name="zoho", contains="'Zoho'")
        self.fake.set_dataset(ALL_TYPES, name="hashed",
                              sha256=hashlib.sha256(b"exact").hexdigest())
        token = self.token()
        zoho = self.hunt("graph", {"Query": "where Signer has 'Zoho'"},
                         token).json()
        hashed = self.hunt("graph", {"Query": "exact"}, token).json()
        default = self.hunt("graph", {"Query": "exact "}, token).json()
        self.assertEqual(len(zoho["results"]), 1)
        self.assertEqual(len(hashed["results"]), 2)
        self.assertEqual(len(default["results"]), 3)

    def test_no_dataset_empty_result(self):
        self.fake.state["default_dataset"] = None
        self.fake.write_state()
        body = self.hunt("graph", {"Query": "x"}, self.token()).json()
        self.assertEqual(body["schema"], [])
        self.assertEqual(body["results"], [])

    def test_query_errors(self):
        expected = {"syntax": "recognition error",
                    "too_large": "allowed result size",
                    "preempted": "preempted"}
        graph_token = self.token()
        defender_token = self.token(DEFENDER_SCOPE)
        for kind, text in expected.items():
            with self.subTest(kind=kind):
                self.fake.reset()
                self.fake.set_query_error(kind)
                graph = self.hunt("graph", {"Query": "x"}, graph_token)
                defender = self.hunt("defender", {"Query": "x"},
                                     defender_token)
                error = self.assert_graph_error(graph, 400, "BadRequest")
                self.assertIn(text, error["message"])
                error = self.assert_defender_error(defender, 400,
                                                   "BadRequest")
                self.assertIn(text, error["message"])

    def test_row_limit(self):
        dataset = {"columns": [["N", "string"]], "rows": [["row-{i}"]],
                   "expand": {"count": 100001}}
        self.fake.set_dataset(dataset, name="big")
        body = self.hunt("graph", {"Query": "x"}, self.token()).json()
        self.assertEqual(len(body["results"]), 100000)
        self.assertEqual(body["results"][-1], {"N": "row-99999"})

    def test_invalid_dataset_reported(self):
        self.fake.set_dataset({"columns": [["A", "text"]], "rows": []},
                              name="broken")
        reply = self.hunt("graph", {"Query": "x"}, self.token())
        self.assertEqual(reply.status, 500)
        self.assertIn(b"invalid state", reply.body)

    def test_log_keeps_exact_body(self):
        body = '{"Query":"DeviceInfo | where Name has \'D\\u00dc\'"}'
        token = self.token()
        self.hunt("graph", body.encode("utf-8"), token)
        entry = self.fake.requests("graph")[0]
        token_entry = self.fake.requests("token")[0]
        self.assertEqual(request_body(entry), body.encode("utf-8"))
        self.assertEqual(entry["status"], 200)
        self.assertTrue(entry["headers"]["authorization"].startswith(
            "Bearer "))
        self.assertNotIn(token, entry["headers"]["authorization"])
        self.assertEqual(token_entry["status"], 200)


class FaultTest(FakeTest):

    def setUp(self):
        super().setUp()
        self.fake.set_dataset(device_dataset(2))

    def test_throttle_then_success(self):
        self.fake.set_faults(throttle_fault("defender", retry_after=7,
                                            count=1))
        token = self.token(DEFENDER_SCOPE)
        first = self.hunt("defender", {"Query": "x"}, token)
        second = self.hunt("defender", {"Query": "x"}, token)
        error = self.assert_defender_error(first, 429, "429")
        self.assertEqual(first.headers["Retry-After"], "7")
        self.assertIn("quota exceeded", error["message"])
        self.assertEqual(second.status, 200)

    def test_endpoint_filter(self):
        self.fake.set_faults(server_error_fault("graph"))
        token = self.token()
        reply = self.hunt("graph", {"Query": "x"}, token)
        error = self.assert_graph_error(reply, 500, "UnknownError")
        self.assertEqual(error["message"], "")

    def test_count_persists_in_state(self):
        self.fake.set_faults(fault("graph", 2, status=503,
                                   body_text="Service Unavailable"))
        token = self.token()
        statuses = [self.hunt("graph", {"Query": "x"}, token).status
                    for _ in range(3)]
        with open(self.fake.path("fault-counts.json"),
                  encoding="utf-8") as f:
            counts = json.load(f)
        self.assertEqual(statuses, [503, 503, 200])
        self.assertEqual(list(counts.values()), [2])

    def test_delay(self):
        self.fake.set_faults(fault("graph", 1, delay=0.6))
        token = self.token()
        started = time.monotonic()
        reply = self.hunt("graph", {"Query": "x"}, token)
        self.assertEqual(reply.status, 200)
        self.assertGreaterEqual(time.monotonic() - started, 0.6)

    def test_truncated_body(self):
        self.fake.set_faults(fault("graph", 1, truncate=True))
        token = self.token()
        with self.assertRaises(http.client.IncompleteRead):
            self.hunt("graph", {"Query": "x"}, token)

    def test_non_json_body(self):
        self.fake.set_faults(fault("defender", 1, status=502,
                                   body_text="<html>Bad Gateway</html>"))
        reply = self.hunt("defender", {"Query": "x"},
                          self.token(DEFENDER_SCOPE))
        self.assertEqual(reply.status, 502)
        self.assertEqual(reply.headers["Content-Type"], "text/html")

    def test_empty_body(self):
        self.fake.set_faults(fault("graph", 1, empty=True))
        reply = self.hunt("graph", {"Query": "x"}, self.token())
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.body, b"")

    def test_dropped_connection(self):
        self.fake.set_faults(fault("token", 1, drop=True))
        with self.assertRaises(http.client.RemoteDisconnected):
            self.token_request(self.token_fields())

    def test_token_error_fault(self):
        self.fake.set_faults(fault("token", 1, status=400, error={
            "error": "invalid_request", "code": 50196,
            "message": "The server terminated an operation because it "
                       "encountered a client request loop."}))
        reply = self.token_request(self.token_fields())
        self.assert_entra_error(reply, 400, "invalid_request", 50196)

    def test_fault_recorded_in_log(self):
        self.fake.set_faults(throttle_fault("graph", count=1))
        self.hunt("graph", {"Query": "x"}, self.token())
        entry = self.fake.requests("graph")[0]
        self.assertEqual(entry["status"], 429)
        self.assertEqual(entry["fault"], self.fake.state["faults"][0]["id"])


class TlsTest(FakeTest):

    def test_other_ca_rejected(self):
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.send("POST", "/x", cafile=self.fake.other_ca_file)

    def test_localhost_name_matches(self):
        reply = self.send("GET", "/nothing", host="localhost")
        self.assertEqual(reply.status, 404)

    def test_state_files(self):
        for name in ("ca.pem", "other-ca.pem", "port", "fake.json"):
            with self.subTest(name=name):
                self.assertTrue(os.path.exists(self.fake.path(name)))
        with open(self.fake.path("ca.pem"), encoding="ascii") as f:
            ca = f.read()
        self.assertNotIn("PRIVATE KEY", ca)

    def test_keep_alive_reuses_connection(self):
        context = ssl.create_default_context(cafile=self.fake.ca_file)
        conn = http.client.HTTPSConnection("127.0.0.1", self.fake.port,
                                           context=context, timeout=20)
        try:
            statuses = []
            for _ in range(2):
                conn.request("GET", "/nothing")
                reply = conn.getresponse()
                reply.read()
                statuses.append(reply.status)
        finally:
            conn.close()
        self.assertEqual(statuses, [404, 404])
