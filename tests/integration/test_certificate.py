"""Integration tests of certificate credentials (JWT client assertions).

mdhunt signs in to the fake Entra ID with a certificate and must get the
same results as with the client secret.  The fake's verification is
itself checked with assertions made here with python3-jwt, tampered and
otherwise wrong, and against Debian's python3-msal as a reference client.
"""

import base64
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import jwt
import msal
import requests
from cryptography.hazmat.primitives import serialization

from harness import (CLIENT_ID, SECRET, SECRET_MARKER, TENANT_ID,
                     TOKEN_MARKER, FakeCloudTest, REPO, client_certificate,
                     device_dataset, run_mdhunt, write_config, write_secret)

RULE = os.path.join(REPO, "config", "rules",
                    "rmm-zohoassist-file-signature.yaml")
BACKENDS = ("graph", "defender")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"


def b64url(data, padded=False):
    text = base64.urlsafe_b64encode(data).decode("ascii")
    return text if padded else text.rstrip("=")


class CertificateTest(FakeCloudTest):

    def setUp(self):
        super().setUp()
        self.fake.set_dataset(device_dataset(3))
        self.cert = client_certificate(self.tmp)
        self.fake.add_certificate(self.cert)
        self.secret_file = write_secret(self.tmp_path("secret"))
        with open(self.cert["key_file"], encoding="ascii") as f:
            # A line from the middle of the key, to look for in outputs.
            self.key_line = f.read().splitlines()[5]

    def config(self, backend, name="cert", **kwargs):
        if "secret_file" not in kwargs:
            kwargs.setdefault("certificate_file", self.cert["cert_file"])
            kwargs.setdefault("private_key_file", self.cert["key_file"])
        return write_config(self.tmp_path("%s-%s.ini" % (name, backend)),
                            self.fake, backend, **kwargs)

    def hunt(self, config, *args):
        result = run_mdhunt(["-c", config, "hunt", RULE] + list(args))
        for text in (result.stdout.decode("utf-8", "replace"),
                     result.stderr):
            self.assertNotIn(SECRET_MARKER, text)
            self.assertNotIn(TOKEN_MARKER, text)
            self.assertNotIn(self.key_line, text)
        return result

    def last_assertion(self):
        entry = self.fake.requests("token")[-1]
        self.assertEqual(entry["form"]["client_assertion"], ["<redacted>"])
        return entry

    def test_output_matches_client_secret(self):
        for backend in BACKENDS:
            secret_config = self.config(backend, "secret",
                                        secret_file=self.secret_file)
            for fmt in ("table", "ndjson"):
                expected = self.hunt(secret_config, "--format", fmt)
                self.assertEqual(expected.code, 0, expected.stderr)
                for alg in ("PS256", "RS256"):
                    with self.subTest(backend=backend, format=fmt, alg=alg):
                        result = self.hunt(self.config(
                            backend, assertion_alg=alg), "--format", fmt)
                        self.assertEqual(result.code, 0, result.stderr)
                        self.assertEqual(result.stdout, expected.stdout)

    def test_ps256_assertion_shape(self):
        result = self.hunt(self.config("graph"))
        self.assertEqual(result.code, 0, result.stderr)
        entry = self.last_assertion()
        header, claims = (entry["assertion"]["header"],
                          entry["assertion"]["claims"])
        self.assertEqual(entry["form"]["client_assertion_type"],
                         [ASSERTION_TYPE])
        self.assertNotIn("client_secret", entry["form"])
        self.assertEqual(header, {
            "alg": "PS256", "typ": "JWT",
            "x5t#S256": b64url(bytes.fromhex(self.cert["sha256"]))})
        self.assertEqual(claims["aud"], "%s/%s/oauth2/v2.0/token"
                         % (self.fake.url, TENANT_ID))
        self.assertEqual(claims["iss"], CLIENT_ID)
        self.assertEqual(claims["sub"], CLIENT_ID)
        self.assertEqual(claims["nbf"], claims["iat"])
        self.assertEqual(claims["exp"] - claims["iat"], 600)
        self.assertLess(abs(claims["iat"] - time.time()), 60)
        self.assertEqual(uuid.UUID(claims["jti"]).version, 4)

    def test_rs256_assertion_shape(self):
        result = self.hunt(self.config("defender", assertion_alg="RS256"))
        self.assertEqual(result.code, 0, result.stderr)
        header = self.last_assertion()["assertion"]["header"]
        self.assertEqual(header, {
            "alg": "RS256", "typ": "JWT",
            "x5t": b64url(bytes.fromhex(self.cert["sha1"]))})

    def test_fresh_jti_per_token_request(self):
        config = self.config("graph")
        for _ in range(2):
            self.assertEqual(self.hunt(config).code, 0)
        jtis = [e["assertion"]["claims"]["jti"]
                for e in self.fake.requests("token")]
        self.assertEqual(len(jtis), 2)
        self.assertNotEqual(jtis[0], jtis[1])

    def test_encrypted_key_with_passphrase(self):
        cert = client_certificate(self.tmp, name="locked",
                                  passphrase="open sesame")
        self.fake.add_certificate(cert)
        passphrase = write_secret(self.tmp_path("passphrase"), "open sesame")
        result = self.hunt(self.config(
            "graph", certificate_file=cert["cert_file"],
            private_key_file=cert["key_file"], passphrase_file=passphrase))
        self.assertEqual(result.code, 0, result.stderr)

    def test_encrypted_key_without_passphrase(self):
        cert = client_certificate(self.tmp, name="locked",
                                  passphrase="open sesame")
        result = self.hunt(self.config(
            "graph", certificate_file=cert["cert_file"],
            private_key_file=cert["key_file"]))
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn("passphrase_file", result.stderr)
        self.assertEqual(self.fake.requests(), [])

    def test_key_in_certificate_file(self):
        cert = client_certificate(self.tmp, name="both", combined=True)
        self.fake.add_certificate(cert)
        result = self.hunt(self.config("graph",
                                       certificate_file=cert["cert_file"],
                                       private_key_file=None))
        self.assertEqual(result.code, 0, result.stderr)

    def test_unregistered_certificate_rejected(self):
        cert = client_certificate(self.tmp, name="stranger")
        result = self.hunt(self.config(
            "graph", certificate_file=cert["cert_file"],
            private_key_file=cert["key_file"]))
        self.assertEqual(result.code, 3, result.stderr)
        self.assertIn("AADSTS700027", result.stderr)
        self.assertIn("upload the certificate", result.stderr)
        self.assertEqual(self.fake.requests("graph"), [])

    def test_expired_registration_rejected(self):
        self.fake.state["apps"][0]["certificates"][0]["expired"] = True
        self.fake.write_state()
        result = self.hunt(self.config("graph"))
        self.assertEqual(result.code, 3, result.stderr)
        self.assertIn("AADSTS700027", result.stderr)

    def test_tampered_assertion_rejected(self):
        # The registration names mdhunt's certificate by its thumbprints
        # but contains another public key.  mdhunt's signature cannot
        # verify with it, so the service sees a tampered assertion.
        other = client_certificate(self.tmp, name="other")
        self.fake.state["apps"][0]["certificates"][0]["pem"] = other["pem"]
        self.fake.write_state()
        for alg in ("PS256", "RS256"):
            with self.subTest(alg=alg):
                result = self.hunt(self.config("graph", assertion_alg=alg))
                self.assertEqual(result.code, 3, result.stderr)
                self.assertIn("AADSTS700027", result.stderr)
                self.assertIn("did not match the expected signature",
                              result.stderr)

    def test_key_of_other_certificate_rejected_locally(self):
        other = client_certificate(self.tmp, name="other")
        result = self.hunt(self.config("graph",
                                       private_key_file=other["key_file"]))
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn("does not belong to the certificate", result.stderr)
        self.assertEqual(self.fake.requests(), [])

    def test_certificate_and_secret_rejected(self):
        result = self.hunt(self.config("graph",
                                       secret_file=self.secret_file,
                                       certificate_file=self.cert[
                                           "cert_file"]))
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn("keep one", result.stderr)


class FakeAssertionTest(FakeCloudTest):
    """The fake's checks of client assertions, with assertions made here."""

    def setUp(self):
        super().setUp()
        self.cert = client_certificate(self.tmp)
        self.fake.add_certificate(self.cert)
        with open(self.cert["key_file"], "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), None)
        self.token_url = "%s/%s/oauth2/v2.0/token" % (self.fake.url,
                                                      TENANT_ID)
        self.context = ssl.create_default_context(cafile=self.fake.ca_file)

    def assertion(self, alg="PS256", padded=False, thumbprint=None,
                  **claims):
        """Sign an assertion; a claim given as None is left out.
        thumbprint names the header: x5t#S256, x5t, or by default the one
        that goes with alg."""
        now = int(time.time())
        payload = {"aud": self.token_url, "iss": CLIENT_ID,
                   "sub": CLIENT_ID, "jti": str(uuid.uuid4()), "nbf": now,
                   "iat": now, "exp": now + 600}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        if thumbprint is None:
            thumbprint = "x5t#S256" if alg == "PS256" else "x5t"
        digest = self.cert["sha256" if thumbprint == "x5t#S256" else "sha1"]
        headers = {thumbprint: b64url(bytes.fromhex(digest), padded)}
        return jwt.encode(payload, self.key, algorithm=alg, headers=headers)

    def post(self, assertion, assertion_type=ASSERTION_TYPE):
        """POST a token request; returns (status, JSON body)."""
        form = urllib.parse.urlencode({
            "client_id": CLIENT_ID, "scope": GRAPH_SCOPE,
            "client_assertion_type": assertion_type,
            "client_assertion": assertion,
            "grant_type": "client_credentials"}).encode("ascii")
        request = urllib.request.Request(self.token_url, data=form)
        try:
            with urllib.request.urlopen(request, context=self.context,
                                        timeout=10) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def assert_rejected(self, assertion, status, code, **kwargs):
        got_status, body = self.post(assertion, **kwargs)
        self.assertEqual(got_status, status, body)
        self.assertEqual(body["error_codes"], [code])
        self.assertTrue(body["error_description"].startswith(
            "AADSTS%d:" % code))

    def test_both_algorithm_pairs_accepted(self):
        for alg in ("PS256", "RS256"):
            for padded in (False, True):
                with self.subTest(alg=alg, padded=padded):
                    status, body = self.post(self.assertion(alg, padded))
                    self.assertEqual(status, 200, body)
                    self.assertEqual(body["token_type"], "Bearer")

    def test_assertion_without_nbf_accepted(self):
        token = self.assertion(nbf=None)
        status, body = self.post(token)
        self.assertEqual(status, 200, body)

    def test_tampered_claims_rejected(self):
        token = self.assertion()
        header, claims, signature = token.split(".")
        changed = json.loads(base64.urlsafe_b64decode(claims + "=="))
        changed["exp"] += 3600
        forged = ".".join([header, b64url(json.dumps(changed).encode()),
                           signature])
        self.assert_rejected(forged, 401, 700027)

    def test_mismatched_pair_rejected(self):
        self.assert_rejected(self.assertion("PS256", thumbprint="x5t"), 401,
                             700027)
        self.assert_rejected(self.assertion("RS256", thumbprint="x5t#S256"),
                             401, 700027)

    def test_expired_assertion_rejected(self):
        past = int(time.time()) - 3600
        self.assert_rejected(self.assertion(iat=past - 600, nbf=past - 600,
                                            exp=past), 401, 700024)

    def test_future_assertion_rejected(self):
        later = int(time.time()) + 3600
        self.assert_rejected(self.assertion(nbf=later, exp=later + 600),
                             401, 700024)

    def test_wrong_audience_rejected(self):
        self.assert_rejected(self.assertion(
            aud="https://login.microsoftonline.com/%s/oauth2/v2.0/token"
            % TENANT_ID), 401, 700023)

    def test_wrong_issuer_rejected(self):
        other = "0f0e0d0c-0b0a-4909-8807-060504030201"
        self.assert_rejected(self.assertion(iss=other), 401, 700021)
        self.assert_rejected(self.assertion(sub=other), 401, 700021)

    def test_replayed_jti_rejected(self):
        token = self.assertion()
        status, body = self.post(token)
        self.assertEqual(status, 200, body)
        self.assert_rejected(token, 401, 50027)

    def test_unknown_thumbprint_rejected(self):
        other = client_certificate(self.tmp, name="other")
        self.cert = other
        with open(other["key_file"], "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), None)
        self.assert_rejected(self.assertion(), 401, 700027)

    def test_wrong_assertion_type_rejected(self):
        self.assert_rejected(self.assertion(), 400, 50012,
                             assertion_type="urn:example:jwt")


class MsalReferenceTest(FakeCloudTest):
    """Debian's python3-msal gets tokens from the fake, which shows that
    the fake speaks the protocol the way a Microsoft client does."""

    def app(self, credential):
        session = requests.Session()
        # Ignore REQUESTS_CA_BUNDLE and proxies of the environment.
        session.trust_env = False
        session.verify = self.fake.ca_file
        self.addCleanup(session.close)
        return msal.ConfidentialClientApplication(
            CLIENT_ID, authority="%s/%s" % (self.fake.url, TENANT_ID),
            client_credential=credential, validate_authority=False,
            http_client=session)

    def assert_token(self, result):
        self.assertIn("access_token", result, result)
        payload = result["access_token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        self.assertEqual(claims["appid"], CLIENT_ID)
        self.assertEqual(claims["tid"], TENANT_ID)
        self.assertEqual(claims["aud"], "https://graph.microsoft.com")

    def test_msal_with_secret(self):
        result = self.app(SECRET).acquire_token_for_client([GRAPH_SCOPE])
        self.assert_token(result)

    def test_msal_with_certificate(self):
        cert = client_certificate(self.tmp)
        self.fake.add_certificate(cert)
        with open(cert["key_file"], encoding="ascii") as f:
            key = f.read()
        result = self.app({"private_key": key, "thumbprint": cert["sha1"]}
                          ).acquire_token_for_client([GRAPH_SCOPE])
        self.assert_token(result)
        header = self.fake.requests("token")[-1]["assertion"]["header"]
        self.assertEqual(header["alg"], "RS256")

    def test_msal_wrong_secret_error(self):
        result = self.app("S3cr3t-CANARY-wrong").acquire_token_for_client(
            [GRAPH_SCOPE])
        self.assertEqual(result.get("error"), "invalid_client")
        self.assertEqual(result.get("error_codes"), [7000215])
