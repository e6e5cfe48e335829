"""Requests, replies and the error envelopes of the three services."""

import json
import re
import secrets
import time
import uuid

JSON_TYPE = "application/json; charset=utf-8"
# The Content-Type Graph sends with JSON replies.
GRAPH_JSON_TYPE = ("application/json;odata.metadata=minimal;"
                   "odata.streaming=true;IEEE754Compatible=false;"
                   "charset=utf-8")

GUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12}$")


class Request:
    """One HTTP request as the handlers see it.

    headers is the http.client.HTTPMessage of the request, so lookups are
    case-insensitive.  path excludes the query string.
    """

    def __init__(self, method, path, query, headers, body, endpoint):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.endpoint = endpoint
        self.issued_token = None    # id of the token a reply issued
        self.request_id = str(uuid.uuid4())
        sent = headers.get("client-request-id", "")
        # Entra and Graph echo a client-request-id that is a GUID and
        # make one up otherwise.
        self.client_request_id = (sent if GUID_RE.match(sent)
                                  else str(uuid.uuid4()))

    def media_type(self):
        """Return the lower-case media type of Content-Type, or ""."""
        value = self.headers.get("Content-Type", "")
        return value.split(";", 1)[0].strip().lower()

    def content_type_params(self):
        """Return the Content-Type parameters as a dict, names lower-case."""
        value = self.headers.get("Content-Type", "")
        params = {}
        for part in value.split(";")[1:]:
            name, _, param = part.partition("=")
            params[name.strip().lower()] = param.strip().strip('"')
        return params


class Reply:
    """A reply to send: status, extra headers and the body bytes."""

    def __init__(self, status, body=b"", headers=None, content_type=None):
        self.status = status
        self.body = body
        self.headers = list(headers or [])
        if content_type is not None:
            self.headers.append(("Content-Type", content_type))

    def header(self, name):
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def encode_json(value):
    """Encode value as compact UTF-8 JSON, the way the services send it."""
    return json.dumps(value, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def json_reply(status, value, headers=None, content_type=JSON_TYPE):
    return Reply(status, encode_json(value), headers, content_type)


def base_headers(request):
    """Return the headers every reply of request's service carries."""
    if request.endpoint == "token":
        return [
            ("Cache-Control", "no-store, no-cache"),
            ("Pragma", "no-cache"),
            ("x-ms-request-id", request.request_id),
            ("client-request-id", request.client_request_id),
        ]
    if request.endpoint == "graph":
        return [
            ("request-id", request.request_id),
            ("client-request-id", request.client_request_id),
        ]
    return []


def entra_error(request, status, error, code, message):
    """Build a flat Entra ID error body for AADSTS code with status."""
    trace_id = request.request_id
    correlation_id = request.client_request_id
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    description = ("AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s"
                   "\r\nTimestamp: %s" % (code, message, trace_id,
                                          correlation_id, stamp))
    body = {
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": "https://login.microsoftonline.com/error?code=%d" % code,
    }
    return json_reply(status, body, base_headers(request))


def graph_error(request, status, code, message, headers=None):
    """Build the Graph error envelope with its innerError block."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                "request-id": request.request_id,
                "client-request-id": request.client_request_id,
            },
        }
    }
    all_headers = base_headers(request) + list(headers or [])
    return json_reply(status, body, all_headers, GRAPH_JSON_TYPE)


def defender_target():
    """Return a tracking id in the observed "|8hex-16hex." form."""
    return "|%s-%s." % (secrets.token_hex(4), secrets.token_hex(8))


def defender_error(status, code, message, headers=None):
    """Build the Defender error envelope {"error": {code, message, target}}."""
    body = {"error": {"code": code, "message": message,
                      "target": defender_target()}}
    return json_reply(status, body, headers)


def service_error(request, status, error, headers=None):
    """Build an error reply in the envelope of request's service.

    error is {"code", "message"} for Graph and Defender, and
    {"error", "code", "message"} for the token endpoint, where code is the
    AADSTS number.
    """
    if request.endpoint == "token":
        reply = entra_error(request, status,
                            error.get("error", "invalid_request"),
                            int(error.get("code", 90000)),
                            error.get("message", ""))
        reply.headers.extend(headers or [])
        return reply
    if request.endpoint == "graph":
        return graph_error(request, status, error.get("code", ""),
                           error.get("message", ""), headers)
    if request.endpoint == "loganalytics":
        # Imported here: loganalytics imports this module.
        from loganalytics import la_error
        return la_error(request, status, error.get("code", ""),
                        error.get("message", ""), headers=headers)
    return defender_error(status, error.get("code", ""),
                          error.get("message", ""), headers)
