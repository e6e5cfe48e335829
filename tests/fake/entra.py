"""The Entra ID token endpoint, client credentials grant only.

v2: POST /{tenant}/oauth2/v2.0/token with scope={resource}/.default.
v1: POST /{tenant}/oauth2/token with resource={resource}.  The real v1
endpoint still exists, so the fake serves it too (option
v1_token_endpoint), with the numbers of the reply sent as JSON strings as
v1 does.

The client authenticates with a secret (in the form or HTTP Basic) or
with a certificate: a JWT client assertion signed with the key of a
certificate in the app's "certificates", verified with python3-jwt
(signature, RS256 with x5t or PS256 with x5t#S256, padded or unpadded,
aud, iss, sub, the time range and jti replay).
GET /{tenant}/v2.0/.well-known/openid-configuration serves the discovery
document that MSAL reads first.

Error codes, "error" values and statuses follow captured real replies.
Where no capture was available the choice is marked as a guess.
"""

import base64
import binascii
import hmac
import json
import re
import time
import urllib.parse

import jwt
from cryptography import x509

from fakestate import GUID_RE, DEFAULT_TOKEN_LIFETIME
from replies import base_headers, entra_error, json_reply, Reply

TOKEN_PATH_RE = re.compile(r"^/([^/]+)/oauth2/(v2\.0/)?token$")
DISCOVERY_PATH_RE = re.compile(
    r"^/([^/]+)/v2\.0/\.well-known/openid-configuration$")
DNS_NAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,63}$")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# The header that names the certificate, and its digest, for each
# algorithm Entra ID is known to accept (what MSAL sends).
ASSERTION_ALGORITHMS = {"RS256": ("x5t", "sha1"),
                        "PS256": ("x5t#S256", "sha256")}

# NOTE: a guess.  Entra ID's tolerance for clock skew is not documented;
# five minutes is a common choice.
CLOCK_SKEW = 300

KEYS_HINT = ("Please visit the Azure Portal, Graph Explorer or directly use "
             "MS Graph to see configured keys for app Id '%s'. Review the "
             "documentation at https://docs.microsoft.com/en-us/graph/"
             "api/application-get?view=graph-rest-1.0&tabs=http to learn "
             "how to retrieve the details.")


class TokenError(Exception):
    """A rejected token request: (status, error, AADSTS code, message)."""

    def __init__(self, status, error, code, message):
        super().__init__(message)
        self.status = status
        self.error = error
        self.code = code
        self.message = message


def _missing(name):
    return TokenError(400, "invalid_request", 900144,
                      "The request body must contain the following "
                      "parameter: '%s'." % name)


def match_discovery_path(path):
    """Return the tenant segment of an OpenID discovery path, else None."""
    match = DISCOVERY_PATH_RE.match(path)
    return urllib.parse.unquote(match.group(1)) if match else None


def match_token_path(path):
    """Return (tenant segment, is_v2) for a token path, else None."""
    match = TOKEN_PATH_RE.match(path)
    if not match:
        return None
    return urllib.parse.unquote(match.group(1)), match.group(2) is not None


def _find_tenant(state, segment):
    lowered = segment.lower()
    if lowered in ("common", "consumers"):
        raise TokenError(
            400, "invalid_request", 9001023,
            "The grant type is not supported over the /common or "
            "/consumers endpoints. Please use the /organizations or "
            "tenant-specific endpoint.")
    if lowered == "organizations":
        # NOTE: a guess.  The sources name only /common and /consumers,
        # but a client credentials token needs one tenant.
        raise TokenError(
            400, "invalid_request", 9001023,
            "The grant type is not supported over the /organizations "
            "endpoint. Please use the tenant-specific endpoint.")
    if GUID_RE.match(segment):
        for tenant in state.get("tenants", []):
            if tenant["id"].lower() == lowered:
                return tenant
    elif DNS_NAME_RE.match(segment):
        for tenant in state.get("tenants", []):
            domains = [d.lower() for d in tenant.get("domains", [])]
            if lowered in domains:
                return tenant
    else:
        raise TokenError(
            400, "invalid_request", 900023,
            "Specified tenant identifier '%s' is neither a valid DNS name, "
            "nor a valid external domain." % segment)
    raise TokenError(
        400, "invalid_tenant", 90002,
        "Tenant '%s' not found. Check to make sure you have the correct "
        "tenant ID and are signing into the correct cloud. Check with your "
        "subscription administrator, this may happen if there are no "
        "active subscriptions for the tenant." % segment)


def _parse_form(request):
    # NOTE: a guess.  A body that is not a form cannot be read, so the
    # service is assumed to report the first required field as missing.
    if request.media_type() != "application/x-www-form-urlencoded":
        raise _missing("grant_type")
    try:
        text = request.body.decode("utf-8")
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True,
                                       strict_parsing=bool(text),
                                       errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise _missing("grant_type") from None
    form = {}
    for name, value in pairs:
        if name in form:
            # NOTE: a guess: code and wording of a repeated parameter.
            raise TokenError(400, "invalid_request", 90100,
                             "Request parameter '%s' is repeated." % name)
        form[name] = value
    return form


def parse_form_for_log(body):
    """Return the form fields of a token request for the request log.

    client_secret and client_assertion are replaced by "<redacted>".
    Returns None when the body is not a form.
    """
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"),
                                       keep_blank_values=True,
                                       errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    form = {}
    for name, value in pairs:
        if name in ("client_secret", "client_assertion"):
            value = "<redacted>"
        form.setdefault(name, []).append(value)
    return form


def _b64url_json(part):
    data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    value = json.loads(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def assertion_for_log(body):
    """Return {"header", "claims"} of a token request's client assertion,
    decoded without verification, or None.  The signature is left out,
    so the log cannot be used to replay the assertion."""
    try:
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8"),
                                           keep_blank_values=True))
        parts = form["client_assertion"].split(".")
        return {"header": _b64url_json(parts[0]),
                "claims": _b64url_json(parts[1])}
    except (UnicodeDecodeError, ValueError, KeyError, IndexError,
            binascii.Error):
        return None


def _basic_credentials(request):
    """Return (client_id, secret) from HTTP Basic auth, or None.

    RFC 6749 section 2.3.1: both parts are form-encoded before base64.
    """
    value = request.headers.get("Authorization", "")
    scheme, _, data = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(data.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise TokenError(401, "invalid_client", 7000215,
                         "Invalid client secret provided.") from None
    client_id, _, secret = decoded.partition(":")
    return (urllib.parse.unquote_plus(client_id),
            urllib.parse.unquote_plus(secret))


def _find_app(state, tenant, client_id):
    for app in state.get("apps", []):
        if (app["tenant"].lower() == tenant["id"].lower()
                and app["client_id"].lower() == client_id.lower()):
            return app
    domains = tenant.get("domains") or [tenant["id"]]
    raise TokenError(
        400, "unauthorized_client", 700016,
        "Application with identifier '%s' was not found in the directory "
        "'%s'. This can happen if the application has not been installed "
        "by the administrator of the tenant or consented to by any user in "
        "the tenant. You may have sent your authentication request to the "
        "wrong tenant." % (client_id, domains[0]))


def _resource_v2(state, form):
    if "resource" in form:
        raise TokenError(400, "invalid_request", 901002,
                         "The 'resource' request parameter is not supported.")
    scope = form.get("scope", "")
    if not scope:
        raise _missing("scope")
    items = scope.split()
    suffix = "/.default"
    if (len(items) != 1 or not items[0].endswith(suffix)
            or items[0][:-len(suffix)] not in state.get("resources", [])):
        raise TokenError(
            400, "invalid_scope", 70011,
            "The provided value for the input parameter 'scope' is not "
            "valid. The scope %s is not valid." % scope)
    return items[0][:-len(suffix)]


def _resource_v1(state, tenant, form):
    resource = form.get("resource", "")
    if not resource:
        raise _missing("resource")
    if resource not in state.get("resources", []):
        # NOTE: a guess: the "error" value and status of AADSTS500011.
        raise TokenError(
            400, "invalid_resource", 500011,
            "The resource principal named %s was not found in the tenant "
            "named %s. This can happen if the application has not been "
            "installed by the administrator of the tenant or consented to "
            "by any user in the tenant. You might have sent your "
            "authentication request to the wrong tenant."
            % (resource, tenant["id"]))
    return resource


def _invalid_signature(app, reason, thumbprint):
    return TokenError(
        401, "invalid_client", 700027,
        "Client assertion contains an invalid signature. [Reason - %s, "
        "Thumbprint of key used by client: '%s', %s]"
        % (reason, thumbprint, KEYS_HINT % app["client_id"]))


def _thumbprint_hex(value):
    """Decode an x5t or x5t#S256 header, padded or not, to upper hex."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.urlsafe_b64decode(
            value + "=" * (-len(value) % 4)).hex().upper()
    except (binascii.Error, ValueError):
        return None


def _find_certificate(app, header):
    """Return (certificate record, algorithm) named by the JWT header."""
    alg = header.get("alg")
    if alg not in ASSERTION_ALGORITHMS:
        # NOTE: a guess: code and wording for an unsupported algorithm,
        # or for RS256 with x5t#S256 and PS256 with x5t, which nobody is
        # known to send.
        raise _invalid_signature(
            app, "The algorithm '%s' is not supported." % alg, "")
    name, digest = ASSERTION_ALGORITHMS[alg]
    thumbprint = _thumbprint_hex(header.get(name))
    if thumbprint is None:
        raise _invalid_signature(app, "The key was not found.", "")
    for cert in app.get("certificates", []):
        if cert[digest].upper() == thumbprint:
            if cert.get("expired"):
                raise _invalid_signature(app, "The key used is expired.",
                                         thumbprint)
            return cert, alg
    raise _invalid_signature(app, "The key was not found.", thumbprint)


def _token_urls(request, tenant, is_v2):
    """The audiences a client assertion may name: this endpoint's URL,
    with the tenant as its id or any of its verified domains."""
    host = request.headers.get("Host", "").lower()
    suffix = "/oauth2/v2.0/token" if is_v2 else "/oauth2/token"
    names = [tenant["id"]] + list(tenant.get("domains", []))
    return {"https://%s/%s%s" % (host, name.lower(), suffix)
            for name in names}


def _audience_matches(aud, urls):
    if not isinstance(aud, str):
        return False
    split = urllib.parse.urlsplit(aud)
    normal = "https://%s%s" % (split.netloc.lower(), split.path.lower())
    return split.scheme == "https" and normal in urls


def _check_times(claims, now):
    exp, nbf = claims.get("exp"), claims.get("nbf", 0)
    if not isinstance(exp, (int, float)) or not isinstance(nbf, (int, float)):
        # NOTE: a guess: the reply to a missing or non-numeric exp.
        raise TokenError(400, "invalid_request", 50027,
                         "JWT token is invalid or malformed.")
    if now > exp + CLOCK_SKEW or now + CLOCK_SKEW < nbf:
        raise TokenError(
            401, "invalid_client", 700024,
            "Client assertion is not within its valid time range. Current "
            "time: %s, assertion valid from %s, expiry time of assertion "
            "%s. Review the documentation at https://docs.microsoft.com/"
            "en-us/azure/active-directory/develop/"
            "active-directory-certificate-credentials ."
            % tuple(time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z",
                                  time.gmtime(t)) for t in (now, nbf, exp)))


def _check_client_assertion(request, tenant, app, form, tokens, is_v2):
    """Verify a certificate credential: a JWT signed with the private key
    of a certificate registered for app (RFC 7523).

    Checks, in order: the assertion type, the JWT form, the certificate
    named by x5t (RS256) or x5t#S256 (PS256), the signature, aud (this
    endpoint's URL), iss and sub (the client_id), the time range and that
    the jti was not used before.
    """
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        # NOTE: a guess: code and wording for a wrong assertion type.
        raise TokenError(400, "invalid_request", 50012,
                         "Client assertion type '%s' is not supported. Use "
                         "'%s'." % (form.get("client_assertion_type", ""),
                                    ASSERTION_TYPE))
    assertion = form.get("client_assertion", "")
    if not assertion:
        raise _missing("client_assertion")
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise TokenError(400, "invalid_request", 50027,
                         "JWT token is invalid or malformed.") from None

    cert, alg = _find_certificate(app, header)
    public_key = x509.load_pem_x509_certificate(
        cert["pem"].encode("ascii")).public_key()
    try:
        claims = jwt.decode(assertion, public_key, algorithms=[alg],
                            options={"verify_exp": False,
                                     "verify_nbf": False,
                                     "verify_iat": False,
                                     "verify_aud": False,
                                     "verify_iss": False})
    except jwt.InvalidSignatureError:
        raise _invalid_signature(
            app, "The provided signature value did not match the expected "
            "signature value.", cert["sha1"].upper()) from None
    except jwt.PyJWTError:
        raise TokenError(400, "invalid_request", 50027,
                         "JWT token is invalid or malformed.") from None

    if not _audience_matches(claims.get("aud"),
                             _token_urls(request, tenant, is_v2)):
        raise TokenError(
            401, "invalid_client", 700023,
            "Client assertion audience claim does not match Realm issuer. "
            "Review the documentation at https://docs.microsoft.com/en-us/"
            "azure/active-directory/develop/"
            "active-directory-certificate-credentials .")
    client_id = app["client_id"].lower()
    if (str(claims.get("iss", "")).lower() != client_id
            or str(claims.get("sub", "")).lower() != client_id):
        raise TokenError(
            401, "invalid_client", 700021,
            "Client assertion application identifier doesn't match "
            "'client_id' parameter. Review the documentation at "
            "https://docs.microsoft.com/en-us/azure/active-directory/"
            "develop/active-directory-certificate-credentials .")
    now = time.time()
    _check_times(claims, now)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        # NOTE: a guess: the reply to an assertion without a jti.
        raise TokenError(400, "invalid_request", 50027,
                         "JWT token is invalid or malformed.")
    if not tokens.use_assertion(app["client_id"], jti,
                                float(claims["exp"]) + CLOCK_SKEW):
        # NOTE: a guess.  Replay protection is implied by the documented
        # jti claim, but no capture of the reply was found.
        raise TokenError(
            401, "invalid_client", 50027,
            "JWT token is invalid or malformed. The client assertion with "
            "jti '%s' was already used." % jti)


def _check_secret(app, secret):
    matched = None
    for candidate in app.get("secrets", []):
        value = candidate["value"].encode("utf-8")
        if hmac.compare_digest(value, secret.encode("utf-8")):
            matched = candidate
    if matched is None:
        raise TokenError(
            401, "invalid_client", 7000215,
            "Invalid client secret provided. Ensure the secret being sent "
            "in the request is the client secret value, not the client "
            "secret ID, for a secret added to app '%s'." % app["client_id"])
    if matched.get("expired"):
        raise TokenError(
            401, "invalid_client", 7000222,
            "The provided client secret keys for app '%s' are expired. "
            "Visit the Azure portal to create new keys for your app: "
            "https://aka.ms/NewClientSecret, or consider using certificate "
            "credentials for added security: https://aka.ms/certCreds."
            % app["client_id"])


def _authenticate(request, tenant, app, form, basic, tokens, is_v2):
    if "client_assertion" in form or "client_assertion_type" in form:
        if "client_secret" in form or basic is not None:
            # NOTE: a guess, as for two ways of sending a secret.
            raise TokenError(400, "invalid_request", 90100,
                             "A client secret and a client assertion were "
                             "both sent; send one.")
        _check_client_assertion(request, tenant, app, form, tokens, is_v2)
        return
    if basic is not None and "client_secret" in form:
        # NOTE: a guess.  RFC 6749 forbids two client authentication
        # methods in one request; the service's reply to it is unknown.
        raise TokenError(400, "invalid_request", 90100,
                         "The client secret was sent both in the "
                         "Authorization header and in the request body.")
    secret = basic[1] if basic is not None else form.get("client_secret")
    if not secret:
        raise TokenError(401, "invalid_client", 7000218,
                         "The request body must contain the following "
                         "parameter: 'client_assertion' or "
                         "'client_secret'.")
    _check_secret(app, secret)


def _issue(request, state, tokens, tenant, app, resource, is_v2, fault):
    options = state["options"]
    effects = (fault or {}).get("token", {})
    lifetime = int(effects.get("lifetime", options.get(
        "token_lifetime", DEFAULT_TOKEN_LIFETIME)))
    roles = app.get("roles", {}).get(resource, [])
    text, record = tokens.issue(tenant["id"], app["client_id"], resource,
                                roles, lifetime,
                                bool(effects.get("expired_on_issue")))
    if is_v2:
        expires = (str(lifetime) if effects.get("expires_in_string")
                   else lifetime)
        body = {"token_type": "Bearer", "expires_in": expires,
                "ext_expires_in": expires, "access_token": text}
    else:
        now = int(record["issued"])
        body = {"token_type": "Bearer", "expires_in": str(lifetime),
                "ext_expires_in": str(lifetime),
                "expires_on": str(now + lifetime),
                "not_before": str(now), "resource": resource,
                "access_token": text}
    return json_reply(200, body, base_headers(request)), record


def handle_token(request, state, tokens, fault):
    """Handle a token request; returns (reply, token record or None)."""
    tenant_segment, is_v2 = match_token_path(request.path)
    if request.method == "OPTIONS":
        return Reply(204, headers=base_headers(request) +
                     [("Allow", "POST, OPTIONS")]), None
    try:
        if request.method != "POST":
            # NOTE: AADSTS900561 is from real replies seen elsewhere, not
            # from the consulted documentation.
            raise TokenError(
                400, "invalid_request", 900561,
                "The endpoint only accepts POST, OPTIONS requests. "
                "Received a %s request." % request.method)
        tenant = _find_tenant(state, tenant_segment)
        form = _parse_form(request)
        grant_type = form.get("grant_type", "")
        if not grant_type:
            raise _missing("grant_type")
        if grant_type != "client_credentials":
            raise TokenError(400, "unsupported_grant_type", 70003,
                             "The app requested an unsupported grant type "
                             "'%s'." % grant_type)
        basic = _basic_credentials(request)
        client_id = form.get("client_id") or (basic[0] if basic else "")
        if not client_id:
            raise _missing("client_id")
        app = _find_app(state, tenant, client_id)
        if is_v2:
            resource = _resource_v2(state, form)
        else:
            resource = _resource_v1(state, tenant, form)
        _authenticate(request, tenant, app, form, basic, tokens, is_v2)
    except TokenError as e:
        return entra_error(request, e.status, e.error, e.code,
                           e.message), None
    return _issue(request, state, tokens, tenant, app, resource, is_v2,
                  fault)


def handle_discovery(request, state):
    """Serve the OpenID Connect discovery document of a tenant, which MSAL
    reads to find the token endpoint.  The shape follows the real
    document; the fake serves it for the v2.0 endpoints only."""
    segment = match_discovery_path(request.path)
    try:
        if request.method != "GET":
            raise TokenError(
                400, "invalid_request", 900561,
                "The endpoint only accepts GET requests. Received a %s "
                "request." % request.method)
        tenant = _find_tenant(state, segment)
    except TokenError as e:
        return entra_error(request, e.status, e.error, e.code, e.message)
    host = request.headers.get("Host", "")
    base = "https://%s/%s" % (host, tenant["id"])
    body = {
        "token_endpoint": base + "/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": "https://%s/%s/discovery/v2.0/keys" % (host,
                                                          tenant["id"]),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token",
                                     "id_token token"],
        "scopes_supported": ["openid", "profile", "email",
                             "offline_access"],
        "issuer": base + "/v2.0",
        "request_uri_parameter_supported": False,
        "authorization_endpoint": base + "/oauth2/v2.0/authorize",
        "device_authorization_endpoint": base + "/oauth2/v2.0/devicecode",
        "end_session_endpoint": base + "/oauth2/v2.0/logout",
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "msgraph_host": "graph.microsoft.com",
    }
    return json_reply(200, body, base_headers(request))


def token_is_valid(record, options, now=None):
    """Return "" for a usable token record, else why it is not usable."""
    now = time.time() if now is None else now
    if record["issued"] <= float(options.get("tokens_revoked_before", 0)):
        return "revoked"
    if now >= record["exp"]:
        return "expired"
    return ""
