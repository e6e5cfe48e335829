"""Advanced hunting: Graph runHuntingQuery and the Defender XDR API.

Both endpoints serve the same dataset for a query, so a test can compare
what a client makes of the two reply shapes.  A dataset in the state file
is one of:

  {"columns": [[name, kusto type], ...], "rows": [[value, ...], ...],
   "expand": {"count": N}}       expand is optional, see expand_rows()
  {"error": "syntax" | "too_large" | "preempted", "message": text}

Kusto types: datetime, string, long, int, bool, real, dynamic, guid,
timespan.  Datetime values are written "2025-03-01T12:00:00Z" with 0 to 7
fractional digits and are sent with exactly 7, as both services do.
"""

import datetime
import hashlib
import json
import random
import re

from fakestate import (DEFENDER_RESOURCE, DEFENDER_ROLE, GRAPH_RESOURCE,
                       GRAPH_ROLE, StateError)
from entra import token_is_valid
from replies import (GRAPH_JSON_TYPE, base_headers, defender_error,
                     graph_error, json_reply)

# Kusto type to the type name both services put in the schema.  Only
# DateTime and String appear in the documentation.  The others are .NET
# names by analogy.
# NOTE: "Dynamic" is a guess; the real name may be "Object".
SERVICE_TYPES = {
    "datetime": "DateTime",
    "string": "String",
    "long": "Int64",
    "int": "Int32",
    "bool": "Boolean",
    "real": "Double",
    "dynamic": "Dynamic",
    "guid": "Guid",
    "timespan": "TimeSpan",
}

GRAPH_CONTEXT = ("https://graph.microsoft.com/v1.0/$metadata#"
                 "microsoft.graph.security.huntingQueryResults")

QUERY_ERRORS = {
    # NOTE: a guess.  No captured syntax error reply was found, so this is
    # Kusto's style of parse error.
    "syntax": "Query could not be parsed at '|' on line [1,1]. "
              "A recognition error occurred.",
    "too_large": "Query execution has exceeded the allowed result size. "
                 "Optimize your query by limiting the number of results "
                 "and try again",
    # NOTE: a guess: the text after "preempted" and the 400 status.
    "preempted": "Query execution has exceeded the allowed limits. The "
                 "query execution was preempted. This could possibly be "
                 "due to high CPU and/or memory resource consumption. "
                 "Optimize your query by following best practices and try "
                 "again.",
}

DATETIME_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d{1,7}))?"
    r"(?:Z|\+00:00)$")


class Unauthorized(Exception):
    """The token is missing or unusable: reason is a short key."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# Key: where the Bearer token failed.  Values: Graph message, Defender
# reason.  NOTE: the wording is from real replies seen elsewhere and is
# not in the consulted documentation.
AUTH_MESSAGES = {
    "missing": ("Access token is empty.", "missing access token"),
    "unknown": ("Access token validation failure.",
                "invalid access token"),
    "expired": ("Lifetime validation failed, the token is expired.",
                "access token has expired"),
    "revoked": ("Access token validation failure.",
                "access token has been revoked"),
    "audience": ("Access token validation failure. Invalid audience.",
                 "invalid audience"),
}


def authenticate(request, state, tokens, audience):
    """Return the record of the request's Bearer token for audience.

    Raises Unauthorized when the token is missing, unknown, expired,
    revoked or issued for another resource.
    """
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing")
    record = tokens.lookup(token)
    if record is None:
        raise Unauthorized("unknown")
    problem = token_is_valid(record, state["options"])
    if problem:
        raise Unauthorized(problem)
    if record["aud"] != audience:
        raise Unauthorized("audience")
    return record


def _fraction7(text):
    return (text or "").ljust(7, "0")


def render_value(kusto_type, value, where):
    """Convert a dataset value to its JSON form in a reply."""
    if value is None:
        return None
    if kusto_type == "datetime":
        match = DATETIME_RE.match(value) if isinstance(value, str) else None
        if not match:
            raise StateError("%s: datetime %r must look like "
                             "2025-03-01T12:00:00.1234567Z" % (where, value))
        date, clock, fraction = match.groups()
        return "%sT%s.%sZ" % (date, clock, _fraction7(fraction))
    if kusto_type in ("long", "int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kusto_type == "real":
        ok = (isinstance(value, (int, float))
              and not isinstance(value, bool))
    elif kusto_type == "bool":
        ok = isinstance(value, bool)
    elif kusto_type in ("string", "guid", "timespan"):
        ok = isinstance(value, str)
    else:
        # NOTE: a guess: dynamic values are sent as JSON values, not as
        # strings holding JSON.
        ok = True
    if not ok:
        raise StateError("%s: %r is not a valid %s value"
                         % (where, value, kusto_type))
    return value


def _columns(dataset, name):
    columns = dataset.get("columns")
    where = "dataset %s" % name
    if not isinstance(columns, list):
        raise StateError(where + ": columns must be a list")
    result = []
    for i, column in enumerate(columns):
        if (not isinstance(column, list) or len(column) != 2
                or column[1] not in SERVICE_TYPES):
            raise StateError("%s: columns[%d] must be [name, type] with a "
                             "type from %s" % (where, i,
                                               sorted(SERVICE_TYPES)))
        result.append((column[0], column[1]))
    return result


def _substitute(value, index):
    if isinstance(value, str):
        return value.replace("{i}", index)
    return value


def expand_rows(templates, count, limit):
    """Make count rows (at most limit) by cycling the template rows.

    "{i}" in a string value becomes the row number, so expanded rows stay
    distinct.  Lets a test ask for 100,000 rows without writing them.
    """
    rows = []
    total = min(count, limit)
    for i in range(total):
        template = templates[i % len(templates)]
        index = str(i)
        rows.append({key: _substitute(value, index)
                     for key, value in template.items()})
    return rows


def render_dataset(dataset, name, row_limit):
    """Return (schema [(name, service type)], rows [dict]) for dataset."""
    columns = _columns(dataset, name)
    rows = dataset.get("rows", [])
    if not isinstance(rows, list):
        raise StateError("dataset %s: rows must be a list" % name)
    expand = dataset.get("expand")
    rendered = []
    source = rows if expand else rows[:row_limit]
    for r, row in enumerate(source):
        if not isinstance(row, list) or len(row) != len(columns):
            raise StateError("dataset %s: rows[%d] must have %d values"
                             % (name, r, len(columns)))
        rendered.append({
            column: render_value(kusto_type, value,
                                 "dataset %s: rows[%d].%s" % (name, r,
                                                              column))
            for (column, kusto_type), value in zip(columns, row)
        })
    if expand:
        if not rendered:
            raise StateError("dataset %s: expand needs rows" % name)
        rendered = expand_rows(rendered, int(expand.get("count", 0)),
                               row_limit)
    schema = [(column, SERVICE_TYPES[kusto_type])
              for column, kusto_type in columns]
    return schema, rendered


def select_dataset(state, query):
    """Return (name, dataset) chosen for query, or (None, None).

    The select rules are tried in order, then default_dataset.
    """
    datasets = state.get("datasets", {})
    digest = hashlib.sha256(query.encode("utf-8")).hexdigest()
    for rule in state.get("select", []):
        if "query_contains" in rule and rule["query_contains"] in query:
            return rule["dataset"], datasets[rule["dataset"]]
        if rule.get("query_sha256", "").lower() == digest:
            return rule["dataset"], datasets[rule["dataset"]]
    name = state.get("default_dataset")
    if name is None:
        return None, None
    return name, datasets[name]


def run_query(state, query):
    """Run query against the datasets.

    Returns ("ok", schema, rows) or ("error", kind, message).
    """
    name, dataset = select_dataset(state, query)
    if dataset is None:
        return "ok", [], []
    if not isinstance(dataset, dict):
        raise StateError("dataset %s must be an object" % name)
    if "error" in dataset:
        kind = dataset["error"]
        if kind not in QUERY_ERRORS:
            raise StateError("dataset %s: error must be one of %s"
                             % (name, sorted(QUERY_ERRORS)))
        return "error", kind, dataset.get("message", QUERY_ERRORS[kind])
    row_limit = int(state["options"]["row_limit"])
    # NOTE: a guess.  Whether the services cut a result at 100,000 rows
    # or fail the query is not documented.  The fake cuts it.
    schema, rows = render_dataset(dataset, name, row_limit)
    return "ok", schema, rows


# ISO 8601 forms Graph accepts for Timespan: a duration ("P30D"), a start
# time, or an interval "start/end", "P30D/end", "start/P30D".
DURATION_RE = re.compile(
    r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?"
    r"(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")
INSTANT_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})(?:T(\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?)"
    r"(Z|[+-]\d{2}:\d{2})?)?$")


def _parse_instant(text):
    match = INSTANT_RE.match(text)
    if not match:
        return None
    date, clock, zone = match.groups()
    clock = clock or "00:00"
    if clock.count(":") == 1:
        clock += ":00"
    seconds, _, fraction = clock.partition(".")
    # NOTE: a guess: a time without a zone is taken as UTC.
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        instant = datetime.datetime.fromisoformat(
            "%sT%s%s" % (date, seconds, zone))
    except ValueError:
        return None
    return instant + datetime.timedelta(
        microseconds=int(_fraction7(fraction)) // 10)


def timespan_is_valid(text):
    """Check a Graph Timespan: a duration, an instant or an interval."""
    parts = text.split("/")
    if len(parts) == 1:
        return bool(DURATION_RE.match(text)) or bool(_parse_instant(text))
    if len(parts) != 2:
        return False
    start, end = parts
    start_is_duration = bool(DURATION_RE.match(start))
    end_is_duration = bool(DURATION_RE.match(end))
    if start_is_duration and end_is_duration:
        return False
    if start_is_duration:
        return _parse_instant(end) is not None
    if end_is_duration:
        return _parse_instant(start) is not None
    first, last = _parse_instant(start), _parse_instant(end)
    return first is not None and last is not None and first <= last


class BadBody(Exception):
    """The hunting request body is invalid; code and message for the
    service's envelope."""

    def __init__(self, code, message, status=400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _check_content_type(request):
    # NOTE: a guess: both services are assumed to reply 415 to a body
    # that is not JSON, and to accept only charset=utf-8.
    charset = request.content_type_params().get("charset", "utf-8")
    if request.media_type() != "application/json" \
            or charset.lower() != "utf-8":
        raise BadBody("UnsupportedMediaType",
                      "The content type '%s' is not supported. Send "
                      "application/json."
                      % request.headers.get("Content-Type", ""), 415)


def _decode_json_object(body):
    def reject_constant(name):
        raise ValueError("invalid JSON constant " + name)

    try:
        value = json.loads(body.decode("utf-8"),
                           parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def graph_parameters(request):
    """Return (query, timespan or None) from a Graph request body."""
    _check_content_type(request)

    body = _decode_json_object(request.body)
    if body is None:
        raise BadBody("BadRequest",
                      "Unable to read JSON request payload. Please ensure "
                      "Content-Type header is set and payload is of valid "
                      "JSON format.")
    # NOTE: a guess.  OData action parameters are matched by name; the
    # fake takes the documented "Query"/"Timespan" and the camelCase
    # "query"/"timespan", and nothing else.
    allowed = {"Query": "Query", "query": "Query",
               "Timespan": "Timespan", "timespan": "Timespan"}
    values = {}
    for key, value in body.items():
        if key not in allowed:
            raise BadBody("BadRequest",
                          "The parameter '%s' in the request payload is "
                          "not a valid parameter for the operation "
                          "'runHuntingQuery'." % key)
        if allowed[key] in values:
            raise BadBody("BadRequest", "The parameter '%s' is given more "
                          "than once." % allowed[key])
        values[allowed[key]] = value

    query = values.get("Query")
    if not isinstance(query, str) or not query.strip():
        raise BadBody("BadRequest",
                      "The parameter 'Query' must be a non-empty string.")

    timespan = values.get("Timespan")
    if timespan is not None and (not isinstance(timespan, str)
                                 or not timespan_is_valid(timespan)):
        raise BadBody("BadRequest",
                      "The parameter 'Timespan' has an invalid value %s. "
                      "Use an ISO 8601 duration or interval such as P30D."
                      % json.dumps(timespan))
    return query, timespan


def defender_query(request):
    """Return the query of a Defender request body."""
    _check_content_type(request)
    body = _decode_json_object(request.body)
    query = body.get("Query") if body is not None else None
    if not isinstance(query, str) or not query.strip():
        raise BadBody("InvalidRequestBody", "Missing query.")
    # NOTE: a guess.  The API documents only "Query" and would probably
    # ignore other keys, but then a Timespan would be dropped without a
    # word.  The fake rejects them so that a client which sends one
    # notices.
    for key in body:
        if key != "Query":
            raise BadBody("InvalidRequestBody",
                          "Unknown parameter '%s'. Only 'Query' is "
                          "accepted; put the time range in the query."
                          % key)
    return query


def _method_not_allowed(request):
    return request.method != "POST"


def _graph_result(request, state, schema, rows):
    key_name, key_type = (("Name", "Type")
                          if state["options"]["graph_schema_keys"] == "pascal"
                          else ("name", "type"))
    body = {
        "@odata.context": GRAPH_CONTEXT,
        "schema": [{key_name: name, key_type: service_type}
                   for name, service_type in schema],
        "results": rows,
    }
    return json_reply(200, body, base_headers(request), GRAPH_JSON_TYPE)


def handle_graph(request, state, tokens):
    """Handle POST /v1.0/security/runHuntingQuery."""
    if _method_not_allowed(request):
        # NOTE: a guess: the code and message of a wrong method.
        return graph_error(request, 405, "MethodNotAllowed",
                           "The HTTP method '%s' is not supported by "
                           "runHuntingQuery." % request.method,
                           [("Allow", "POST")])
    try:
        record = authenticate(request, state, tokens, GRAPH_RESOURCE)
    except Unauthorized as e:
        return graph_error(request, 401, "InvalidAuthenticationToken",
                           AUTH_MESSAGES[e.reason][0],
                           [("WWW-Authenticate", 'Bearer realm=""')])
    if GRAPH_ROLE not in record["roles"]:
        # NOTE: a guess: the message of a missing application role.
        return graph_error(
            request, 403, "Forbidden",
            "Missing role permissions on the request. API requires one of "
            "'%s'. Roles on the request '%s'."
            % (GRAPH_ROLE, ", ".join(record["roles"])))
    try:
        query, _ = graph_parameters(request)
    except BadBody as e:
        return graph_error(request, e.status, e.code, e.message)
    outcome = run_query(state, query)
    if outcome[0] == "error":
        return graph_error(request, 400, "BadRequest", outcome[2])
    return _graph_result(request, state, outcome[1], outcome[2])


def _defender_stats(rows):
    cpu = "00:00:00.%07d" % random.randint(100000, 9999999)
    return {
        "ExecutionTime": round(random.uniform(0.2, 2.5), 2),
        "resource_usage": {
            "cache": {
                "memory": {"hits": 12, "misses": 1, "total": 13},
                "disk": {"hits": 1, "misses": 0, "total": 1},
            },
            "cpu": {"user": cpu, "kernel": "00:00:00",
                    "total cpu": cpu},
            "memory": {"peak_per_node": 16777216},
        },
        "dataset_statistics": [
            # An estimate: the fake does not store tables.
            {"table_row_count": len(rows), "table_size": 200 * len(rows)},
        ],
    }


def handle_defender(request, state, tokens):
    """Handle POST /api/advancedhunting/run."""
    if _method_not_allowed(request):
        # NOTE: a guess: the code and message of a wrong method.
        return defender_error(405, "MethodNotAllowed",
                              "The requested resource does not support "
                              "http method '%s'." % request.method,
                              [("Allow", "POST")])
    try:
        record = authenticate(request, state, tokens, DEFENDER_RESOURCE)
    except Unauthorized as e:
        # NOTE: a guess: the reasons after the observed prefix.
        return defender_error(401, "Unauthorized",
                              "Unauthorized request - reason of failure: "
                              + AUTH_MESSAGES[e.reason][1])
    if DEFENDER_ROLE not in record["roles"]:
        return defender_error(403, "Forbidden",
                              "Missing application roles. API required "
                              "roles: %s, application roles" % DEFENDER_ROLE)
    try:
        query = defender_query(request)
    except BadBody as e:
        return defender_error(e.status, e.code, e.message)
    outcome = run_query(state, query)
    if outcome[0] == "error":
        return defender_error(400, "BadRequest", outcome[2])
    schema, rows = outcome[1], outcome[2]
    body = {
        "Stats": _defender_stats(rows),
        "Schema": [{"Name": name, "Type": service_type}
                   for name, service_type in schema],
        "Results": rows,
    }
    return json_reply(200, body)
