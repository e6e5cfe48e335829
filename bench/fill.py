"""Pre-fill the stores of the benchmark: mdhunt's and the peers'.

mdhunt's store is made by mdhunt itself: one `run --once --all` of the 50
rules against empty results creates the schema, the rule and query rows
and a first (baseline) run of every rule.  This module then moves those
runs 30 days back and adds 29 daily successful runs per rule after them.
It writes 1,000,000 entities with Python's sqlite3, in the columns and
encodings of src/store.c.  Instants are md_instant ticks, the latest row
is compact JSON, and first_run and last_run point at real runs.

The peers' store holds the same devices in the one table a script would
keep: rule, DeviceId, DeviceName, first and last seen.
"""

import datetime
import os
import random
import sqlite3

import data

HISTORY_DAYS = 30
TOTAL_ENTITIES = 1_000_000
# Share of each other rule's entities last seen before the latest run.
STALE_SHARE = 0.05

PEER_SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "peers", "schema.sql")

ENTITY_INSERT = (
    "INSERT INTO entity (rule_id, key, device_id, device_name, first_run,"
    " first_seen, last_run, last_seen, telemetry_first_seen,"
    " telemetry_last_seen, runs_seen, tracked_values, row_json)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)")

RUN_INSERT = (
    "INSERT INTO run (rule_id, tenant, backend, period, due, started, ended,"
    " status, row_count, truncated, query_hash, exclusions_hash, baseline,"
    " key_count, unchanged_count)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, 'ok', ?, 0, ?, ?, 0, ?, ?)")


def parse_time(text):
    return datetime.datetime.strptime(text[:26], "%Y-%m-%dT%H:%M:%S.%f") \
        .replace(tzinfo=datetime.timezone.utc)


class History:
    """The daily runs of every rule: run ids and start instants."""

    def __init__(self, reference):
        # The latest run started an hour before the reference instant.
        self.starts = [reference - datetime.timedelta(
            days=HISTORY_DAYS - 1 - d, hours=1) for d in range(HISTORY_DAYS)]
        self.run_ids = {}       # rule id -> [run id per day]

    def start_ticks(self, day):
        return data.ticks(self.starts[day])


def rewrite_history(db, history, entity_counts):
    """Move each rule's first run to day 0 and add runs for days 1..29."""
    first_runs = db.execute(
        "SELECT id, rule_id, tenant, backend, period, query_hash,"
        " exclusions_hash FROM run ORDER BY id").fetchall()
    if len(first_runs) != len(entity_counts):
        raise RuntimeError("the store has %d runs, expected one per rule "
                           "(%d)" % (len(first_runs), len(entity_counts)))
    t0 = history.start_ticks(0)
    db.execute("UPDATE run SET due = ?, started = ?, ended = ?",
               (t0, t0, t0 + 2 * data.TICKS_PER_SECOND))
    for run_id, rule_id, *_ in first_runs:
        history.run_ids[rule_id] = [run_id]
    for day in range(1, HISTORY_DAYS):
        start = history.start_ticks(day)
        for _, rule_id, tenant, backend, period, qhash, xhash in first_runs:
            n = entity_counts[rule_id]
            cur = db.execute(RUN_INSERT, (
                rule_id, tenant, backend, period, start, start,
                start + 3 * data.TICKS_PER_SECOND, n, qhash, xhash, n, n))
            history.run_ids[rule_id].append(cur.lastrowid)


def entity_record(rule_id, row, history, rng, current):
    """Return the entity tuple of one device row for ENTITY_INSERT."""
    last_day = HISTORY_DAYS - 1 if current else rng.randint(
        1, HISTORY_DAYS - 3)
    first_day = rng.randint(0, last_day)
    runs = history.run_ids[rule_id]
    return (rule_id, row[0], row[0], row[1],
            runs[first_day], history.start_ticks(first_day),
            runs[last_day], history.start_ticks(last_day),
            data.ticks(parse_time(row[2])), data.ticks(parse_time(row[3])),
            rng.randint(1, last_day - first_day + 1),
            data.compact_json(data.row_object(row)))


def start_rule_entities(start_id, start, history, reference):
    rng = random.Random(11)
    for index, current in start.known_indexes():
        row = data.device_row(start.UNIVERSE, index, reference, rng)
        yield entity_record(start_id, row, history, rng, current)


def other_rule_entities(rule_id, count, history, reference, seed):
    rng = random.Random(seed)
    stale_from = int(count * (1 - STALE_SHARE))
    for index in range(count):
        row = data.device_row("rule-" + rule_id, index, reference, rng)
        yield entity_record(rule_id, row, history, rng, index < stale_from)


def entity_counts(start_id, other_ids, start):
    """Split TOTAL_ENTITIES: the starting rule's, the rest evenly."""
    counts = {start_id: start.entity_count()}
    rest = TOTAL_ENTITIES - counts[start_id]
    for i, rid in enumerate(other_ids):
        counts[rid] = rest // len(other_ids) + (
            1 if i < rest % len(other_ids) else 0)
    return counts


def fill_mdhunt_store(path, start_id, other_ids, start, reference):
    """Add history and entities to a store that mdhunt created with one
    empty baseline run per rule.  Returns {rule id: entity count}."""
    counts = entity_counts(start_id, other_ids, start)
    history = History(reference)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        rewrite_history(db, history, counts)
        db.execute("DELETE FROM entity")
        db.executemany(ENTITY_INSERT, sorted(
            start_rule_entities(start_id, start, history, reference),
            key=lambda e: e[1]))
        for seed, rid in enumerate(other_ids, start=100):
            db.executemany(ENTITY_INSERT, sorted(
                other_rule_entities(rid, counts[rid], history, reference,
                                    seed), key=lambda e: e[1]))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return counts


def iso(ticks):
    seconds, rest = divmod(ticks, data.TICKS_PER_SECOND)
    instant = data.EPOCH + datetime.timedelta(seconds=seconds,
                                              microseconds=rest // 10)
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def fill_peer_store(path, mdhunt_store):
    """Write the devices of mdhunt_store into a new peer store at path."""
    src = sqlite3.connect("file:%s?mode=ro" % mdhunt_store, uri=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        with open(PEER_SCHEMA_FILE, encoding="utf-8") as f:
            db.executescript(f.read())
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO device VALUES (?, ?, ?, ?, ?)",
            ((rid, key, name, iso(first), iso(last))
             for rid, key, name, first, last in src.execute(
                 "SELECT rule_id, key, device_name, first_seen, last_seen"
                 " FROM entity ORDER BY rule_id, key")))
        db.execute("COMMIT")
    finally:
        db.close()
        src.close()
