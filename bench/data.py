"""Data for the benchmark: devices, reply bodies and rule files.

Everything is generated from fixed seeds, relative to one reference
instant (the time of generation), so two runs of the benchmark on the
same day see the same devices.

The devices look like the result of the shipped ZohoAssist rule, which
summarizes DeviceFileCertificateInfo by DeviceId and DeviceName.  Each
row has a 40-hex-digit DeviceId, a lower-case host name, and FirstSeen
and LastSeen within the 5-day lookback.  The times have 7 fractional
digits and a Z, as the services send them.  Report is a set of
ReportIds, and Count a number of events.
"""

import datetime
import hashlib
import json
import os
import random
import uuid

GRAPH_CONTEXT = ("https://graph.microsoft.com/v1.0/$metadata#"
                 "microsoft.graph.security.huntingQueryResults")

SCHEMA = [
    ("DeviceId", "String"),
    ("DeviceName", "String"),
    ("FirstSeen", "DateTime"),
    ("LastSeen", "DateTime"),
    ("Report", "Dynamic"),
    ("Count", "Int64"),
]

TICKS_PER_SECOND = 10_000_000
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

DEVICE_KINDS = ["lt", "ws", "vdi", "srv", "kiosk"]
SITES = ["ber", "nyc", "lon", "par", "sgp", "syd", "tor", "fra", "mad",
         "osl"]
DOMAINS = ["corp.contoso.com", "contoso.local", "eu.contoso.com"]

LOOKBACK = datetime.timedelta(days=5)

# Remote-management vendors for the signer filter of the generated rules.
VENDORS = ["AnyDesk", "TeamViewer", "ConnectWise", "Splashtop", "NinjaRMM",
           "Atera", "Kaseya", "N-able", "GoTo", "RealVNC", "Radmin",
           "Dameware", "BeyondTrust", "RemotePC", "Supremo", "ShowMyPC",
           "AeroAdmin", "Ammyy", "DWService", "Level", "Pulseway",
           "Syncro", "Tactical", "MeshCentral", "RustDesk", "UltraViewer",
           "ISL Online", "LogMeIn", "Netop", "PDQ", "Action1", "ManageEngine",
           "SimpleHelp", "ScreenMeet", "Zoho Corp", "Addigy", "Jamf",
           "Hexnode", "Itarian", "Comodo", "Naverisk", "SolarWinds",
           "Datto", "Barracuda", "Auvik", "FleetDeck", "Electric",
           "Intelliadmin", "Remote Utilities"]

RULE_TEMPLATE = """\
id: {rule_id}
name: Remote Management and Monitoring tool - {vendor} - File Signature ({n})
description: |
  Devices holding binaries signed by {vendor}, a remote-management tool.
  Generated for the mdhunt benchmark.
severity: Medium
requiredDataConnectors:
  - connectorId: MicrosoftThreatProtection
    dataTypes:
      - DeviceFileCertificateInfo
tactics:
  - CommandAndControl
relevantTechniques:
  - T1219
queryFrequency: 1d
queryPeriod: 5d
entityMappings:
  - entityType: Host
    fieldMappings:
      - identifier: HostName
        columnName: DeviceName
query: |
  let Time_start = now(-5d);
  let Time_end = now();
  // bench rule {n}
  DeviceFileCertificateInfo
  | where Timestamp between (Time_start..Time_end)
  | where Signer has '{vendor}'
  | summarize FirstSeen=min(Timestamp), LastSeen=max(Timestamp),
  Report=make_set(ReportId), Count=count() by DeviceId, DeviceName
"""


def ticks(instant):
    """Return instant as md_instant ticks (100 ns since the epoch)."""
    delta = instant - EPOCH
    return ((delta.days * 86400 + delta.seconds) * TICKS_PER_SECOND
            + delta.microseconds * 10)


def format_time(instant, extra_digit=0):
    """Format a UTC instant with 7 fractional digits and Z."""
    return instant.strftime("%Y-%m-%dT%H:%M:%S.") + "%06d%dZ" % (
        instant.microsecond, extra_digit)


def device_id(universe, index):
    """Return a 40-hex-digit DeviceId, stable for (universe, index)."""
    return hashlib.blake2b(b"%s/%d" % (universe.encode(), index),
                           digest_size=20).hexdigest()


def device_name(universe, index, renamed=False):
    """Return a unique lower-case host name for (universe, index)."""
    h = int(device_id(universe, index)[:8], 16)
    kind = DEVICE_KINDS[h % len(DEVICE_KINDS)]
    site = SITES[(h >> 4) % len(SITES)]
    domain = DOMAINS[(h >> 8) % len(DOMAINS)]
    suffix = "-r" if renamed else ""
    return "%s-%s-%06d%s.%s" % (kind, site, index, suffix, domain)


def device_row(universe, index, reference, rng, renamed=False):
    """Return one result row [DeviceId, DeviceName, FirstSeen, LastSeen,
    Report, Count] whose times fall in the 5 days before reference."""
    first = reference - datetime.timedelta(
        seconds=rng.randint(3600, int(LOOKBACK.total_seconds()) - 60),
        microseconds=rng.randint(0, 999999))
    span = int((reference - first).total_seconds())
    last = first + datetime.timedelta(seconds=rng.randint(0, span - 1),
                                      microseconds=rng.randint(0, 999999))
    reports = sorted(rng.sample(range(10000, 9999999), rng.randint(1, 4)))
    return [device_id(universe, index),
            device_name(universe, index, renamed),
            format_time(first, rng.randint(0, 9)),
            format_time(last, rng.randint(0, 9)),
            reports, len(reports) * rng.randint(1, 6)]


def row_object(row):
    """Return a row as the JSON object the services send."""
    return {name: value for (name, _), value in zip(SCHEMA, row)}


def compact_json(value):
    """Encode value as compact UTF-8 JSON text, as mdhunt stores rows."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def write_graph_reply(path, rows):
    """Write a Graph runHuntingQuery reply body with rows to path."""
    body = {
        "@odata.context": GRAPH_CONTEXT,
        "schema": [{"name": n, "type": t} for n, t in SCHEMA],
        "results": [row_object(r) for r in rows],
    }
    with open(path, "w", encoding="utf-8") as f:
        f.write(compact_json(body))
    return os.path.getsize(path)


def rule_id(n):
    """Return the id of generated rule n, a stable GUID."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "mdhunt-bench-rule-%d" % n))


def write_rules(directory, count, first=1, start_rule=None):
    """Write count generated rule files, numbered from first, to
    directory, plus a copy of start_rule when given.  Returns the ids of
    the generated rules in order."""
    os.makedirs(directory, exist_ok=True)
    ids = []
    for n in range(first, first + count):
        rid = rule_id(n)
        vendor = VENDORS[n % len(VENDORS)]
        text = RULE_TEMPLATE.format(rule_id=rid, vendor=vendor, n=n)
        with open(os.path.join(directory, "bench-rule-%03d.yaml" % n),
                  "w", encoding="utf-8") as f:
            f.write(text)
        ids.append(rid)
    if start_rule is not None:
        with open(start_rule, "rb") as src:
            data = src.read()
        with open(os.path.join(directory, os.path.basename(start_rule)),
                  "wb") as dst:
            dst.write(data)
    return ids


class StartRuleData:
    """The devices of the starting rule and how they relate to its store.

    Device indexes of the universe "start":
      [0, gone)                  known, in the reference set, absent from
                                 the result: "gone"
      [gone, known_current)      known and in the result; the first
                                 `renamed` of them carry a new name
      [known_current, result_end)  in the result, never seen: "new"
      [result_end, + stale)      known, last seen in an older run
    """

    UNIVERSE = "start"

    def __init__(self, rows=100000, new=1000, gone=500, stale=500,
                 renamed=100):
        self.gone = gone
        self.known_current = gone + rows - new
        self.result_end = gone + rows
        self.stale_end = self.result_end + stale
        self.renamed = renamed
        self.rows = rows

    def result_indexes(self):
        return range(self.gone, self.result_end)

    def new_indexes(self):
        return range(self.known_current, self.result_end)

    def known_indexes(self):
        """Known indexes and whether each is in the reference set."""
        for i in range(0, self.known_current):
            yield i, True
        for i in range(self.result_end, self.stale_end):
            yield i, False

    def is_renamed(self, index):
        return self.gone <= index < self.gone + self.renamed

    def result_rows(self, reference, seed=8):
        rng = random.Random(seed)
        return [device_row(self.UNIVERSE, i, reference, rng,
                           renamed=self.is_renamed(i))
                for i in self.result_indexes()]

    def new_device_ids(self):
        return sorted(device_id(self.UNIVERSE, i)
                      for i in self.new_indexes())

    def entity_count(self):
        return self.known_current + (self.stale_end - self.result_end)
