"""The Azure Monitor Log Analytics query API, which the sentinel backend
uses to hunt in a Microsoft Sentinel workspace.

  POST /v1/workspaces/{workspace_id}/query   {"query": ..., "timespan": ...}
  GET  /v1/workspaces/{workspace_id}/query?query=...&timespan=...

It serves the datasets of Graph and Defender (see hunting.py) in Log
Analytics' shape: one table PrimaryResult with lower-case Kusto column
types and rows as positional arrays, dynamic values as JSON text.

Workspaces live in fake.json:

  workspaces  [{"id": GUID, "readers": [client_id, ...], "empty": bool}]

An app needs read access on the workspace (the Log Analytics Reader role),
which the fake models as its client_id in "readers".  An "empty"
workspace contains no data at all and replies 204 No Content.

Two dataset keys matter only here:
  partial   true, or a message: reply with a PartialError beside the rows
  runtime   seconds the query would run; when that is more than the
            request allows (Prefer: wait=N, default 180, at most 600) the
            reply is 504 without waiting
"""

import json
import re
import urllib.parse

from fakestate import GUID_RE, LOG_ANALYTICS_RESOURCE, StateError
from entra import token_is_valid
from hunting import (QUERY_ERRORS, SERVICE_TYPES, render_dataset,
                     select_dataset, timespan_is_valid)
from replies import JSON_TYPE, Reply, json_reply

WORKSPACE_PATH_RE = re.compile(r"^/v1/workspaces/([^/]+)/query$",
                               re.IGNORECASE)

# The service's documented limits: rows per query, and the seconds a query
# may run by default and at most.
ROW_LIMIT = 500000
DEFAULT_WAIT = 180
MAX_WAIT = 600

# Service type name (hunting.SERVICE_TYPES) back to the Kusto name.
KUSTO_TYPES = {service: kusto for kusto, service in SERVICE_TYPES.items()}

PREFER_WAIT_RE = re.compile(r"^\s*wait\s*=\s*(\d{1,9})\s*$", re.IGNORECASE)

# NOTE: a guess.  The wording of these messages is not in the consulted
# documentation; only the codes are.
MESSAGES = {
    "AuthenticationFailed": "Valid authentication was not provided",
    "InvalidAuthenticationToken": "The provided authentication is not "
                                  "valid",
    "InvalidAuthenticationTokenAudience": "The provided authentication is "
                                          "not valid for this resource",
    "InsufficientAccessError": "The provided credentials have "
                               "insufficient access to perform the "
                               "requested operation",
    "PathNotFoundError": "The requested path does not exist",
}

PARTIAL_MESSAGE = "There were some errors when processing your query."
# Kusto's text for a result cut at its data size limit.
DATA_SIZE_MESSAGE = ("Query result set has exceeded the internal data size "
                     "limit 64000000 (E_QUERY_RESULT_SET_TOO_LARGE; see "
                     "https://aka.ms/kustoquerylimits)")
# NOTE: a guess, after the data size text Kusto is seen to send.
ROW_LIMIT_MESSAGE = ("Query result set has exceeded the internal record "
                     "count limit %d (E_QUERY_RESULT_SET_TOO_LARGE; see "
                     "https://aka.ms/kustoquerylimits)")


def match_workspace_path(path):
    """Return the workspace segment of a query path, else None."""
    match = WORKSPACE_PATH_RE.match(path)
    if not match:
        return None
    return urllib.parse.unquote(match.group(1))


def headers_of(request):
    """Return the headers every reply of the service carries."""
    # NOTE: a guess: the request id header Log Analytics sends.
    return [("x-ms-request-id", request.request_id)]


def la_error(request, status, code, message, inner=None, headers=None):
    """Build the Log Analytics error envelope, with an innererror chain
    when inner ({"code", "message", "innererror"}) is given."""
    error = {"message": message, "code": code}
    if inner is not None:
        error["innererror"] = inner
    return json_reply(status, {"error": error},
                      headers_of(request) + list(headers or []))


def _known_error(request, status, code):
    return la_error(request, status, code, MESSAGES[code])


def _check_token(request, state, tokens):
    """Return the token record of the request, or an error reply."""
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None, _known_error(request, 401, "AuthenticationFailed")
    record = tokens.lookup(token)
    if record is None or token_is_valid(record, state["options"]):
        return None, _known_error(request, 403,
                                  "InvalidAuthenticationToken")
    if record["aud"] != LOG_ANALYTICS_RESOURCE:
        return None, _known_error(request, 403,
                                  "InvalidAuthenticationTokenAudience")
    return record, None


def _workspaces(state):
    workspaces = state.get("workspaces", [])
    if not isinstance(workspaces, list):
        raise StateError("workspaces must be a list")
    for i, workspace in enumerate(workspaces):
        if (not isinstance(workspace, dict)
                or not isinstance(workspace.get("id"), str)
                or not GUID_RE.match(workspace["id"])
                or not isinstance(workspace.get("readers", []), list)):
            raise StateError("workspaces[%d] must be {\"id\": GUID, "
                             "\"readers\": [client_id, ...]}" % i)
    return workspaces


def _find_workspace(state, segment):
    for workspace in _workspaces(state):
        if workspace["id"].lower() == segment.lower():
            return workspace
    return None


def _can_read(workspace, record):
    readers = [r.lower() for r in workspace.get("readers", [])]
    return record["client_id"].lower() in readers


class BadArgument(Exception):
    """A request the service rejects with 400 BadArgumentError."""


def _body_parameters(request):
    """Return {"query", "timespan"} of a POST body, or None for a request
    the service replies to with an empty 200 reply."""
    if request.media_type() != "application/json" or not request.body:
        return None
    try:
        body = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        body = None
    if not isinstance(body, dict):
        # NOTE: a guess: the message of a body that is not a JSON object.
        raise BadArgument("The request body is not a valid JSON object.")
    # NOTE: a guess.  The real service may ignore unknown keys; the fake
    # rejects them so that a client sending "Query" notices.
    for key in body:
        if key not in ("query", "timespan", "workspaces"):
            raise BadArgument("The request had some invalid properties: "
                              "unknown property '%s'." % key)
    workspaces = body.get("workspaces", [])
    if not (isinstance(workspaces, list)
            and all(isinstance(w, str) for w in workspaces)):
        raise BadArgument("The property 'workspaces' must be a list of "
                          "workspace IDs.")
    return body


def _get_parameters(request):
    values = urllib.parse.parse_qs(request.query, keep_blank_values=True)
    return {key: items[-1] for key, items in values.items()}


def _parameters(request):
    """Return (query, timespan or None), None for an empty 200 reply."""
    if request.method == "GET":
        values = _get_parameters(request)
    else:
        values = _body_parameters(request)
        if values is None:
            return None
    query = values.get("query")
    if not isinstance(query, str) or not query.strip():
        raise BadArgument("The request had some invalid properties: "
                          "'query' is required.")
    timespan = values.get("timespan")
    if timespan is not None and (not isinstance(timespan, str)
                                 or not timespan_is_valid(timespan)):
        raise BadArgument("The request had some invalid properties: "
                          "invalid timespan %s." % json.dumps(timespan))
    return query, timespan


def allowed_wait(request):
    """Return the seconds a query may run: Prefer: wait=N, else 180,
    and at most 600."""
    for preference in request.headers.get("Prefer", "").split(","):
        match = PREFER_WAIT_RE.match(preference)
        if match:
            # NOTE: a guess: a longer wait is cut to the maximum, not
            # rejected.
            return min(int(match.group(1)), MAX_WAIT)
    return DEFAULT_WAIT


def _cell(kusto_type, value):
    if kusto_type != "dynamic" or value is None or isinstance(value, str):
        return value
    # NOTE: a guess for scalars: objects and arrays are sent as JSON text,
    # and so, here, are numbers and booleans.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _table(columns, rows):
    return {
        "name": "PrimaryResult",
        "columns": [{"name": name, "type": kusto}
                    for name, kusto in columns],
        "rows": [[_cell(kusto, row.get(name)) for name, kusto in columns]
                 for row in rows],
    }


def _partial_error(message):
    # NOTE: a guess: the codes of the detail and of its innererror.
    return {
        "code": "PartialError",
        "message": PARTIAL_MESSAGE,
        "details": [{
            "code": "EngineError",
            "message": "Something went wrong processing your query on "
                       "the server.",
            "innererror": {"code": "E_QUERY_RESULT_SET_TOO_LARGE",
                           "message": message},
        }],
    }


def _result(request, table, partial=None):
    body = {"tables": [table]}
    if partial is not None:
        body["error"] = partial
    return json_reply(200, body, headers_of(request), JSON_TYPE)


def _query_error(request, kind, message):
    if kind == "syntax":
        inner = {"code": "SyntaxError",
                 "message": "A recognition error occurred in the query.",
                 "innererror": {"code": "SYN0002", "message": message}}
        return la_error(request, 400, "BadArgumentError",
                        "The request had some invalid properties", inner)
    if kind == "too_large":
        return _result(request, _table([], []), _partial_error(message))
    # NOTE: a guess: a query the service stops is answered like one that
    # ran out of time.
    return la_error(request, 504, "GatewayTimeout", message)


def _run(request, state, query):
    name, dataset = select_dataset(state, query)
    if dataset is None:
        return _result(request, _table([], []))
    if not isinstance(dataset, dict):
        raise StateError("dataset %s must be an object" % name)
    if "error" in dataset:
        kind = dataset["error"]
        if kind not in QUERY_ERRORS:
            raise StateError("dataset %s: error must be one of %s"
                             % (name, sorted(QUERY_ERRORS)))
        return _query_error(request, kind,
                            dataset.get("message", QUERY_ERRORS[kind]))
    wait = allowed_wait(request)
    if float(dataset.get("runtime", 0)) > wait:
        # NOTE: a guess: the code and message of the timeout reply.
        return la_error(request, 504, "GatewayTimeout",
                        "The query exceeded the server timeout of %d "
                        "seconds. Ask for more with Prefer: wait." % wait)

    row_limit = int(state["options"].get("la_row_limit", ROW_LIMIT))
    schema, rows = render_dataset(dataset, name, row_limit)
    expand = dataset.get("expand")
    wanted = (int(expand.get("count", 0)) if expand
              else len(dataset.get("rows", [])))
    columns = [(column, KUSTO_TYPES[service]) for column, service in schema]
    partial = None
    if wanted > row_limit:
        partial = _partial_error(ROW_LIMIT_MESSAGE % row_limit)
    elif dataset.get("partial"):
        message = dataset["partial"]
        partial = _partial_error(message if isinstance(message, str)
                                 else DATA_SIZE_MESSAGE)
    return _result(request, _table(columns, rows), partial)


def handle_loganalytics(request, state, tokens):
    """Handle /v1/workspaces/{workspace_id}/query."""
    if request.method not in ("GET", "POST"):
        # NOTE: a guess: the code and message of a wrong method.
        return la_error(request, 405, "MethodNotAllowed",
                        "The HTTP method '%s' is not supported."
                        % request.method, headers=[("Allow", "GET, POST")])
    record, reply = _check_token(request, state, tokens)
    if reply is not None:
        return reply
    workspace = _find_workspace(state, match_workspace_path(request.path))
    if workspace is None:
        return _known_error(request, 404, "PathNotFoundError")
    if not _can_read(workspace, record):
        return _known_error(request, 403, "InsufficientAccessError")
    try:
        parameters = _parameters(request)
    except BadArgument as e:
        return la_error(request, 400, "BadArgumentError", str(e))
    if parameters is None:
        # The service answers a POST without a JSON body this way.
        return Reply(200, b"", headers_of(request))
    if workspace.get("empty"):
        return Reply(204, b"", headers_of(request))
    return _run(request, state, parameters[0])
