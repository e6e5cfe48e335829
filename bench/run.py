#!/usr/bin/python3
"""Run mdhunt's benchmark and write BENCHMARKS.md.

Usage: /usr/bin/python3 bench/run.py [--runs N] [--idle-seconds S]
           [--work DIR] [--output FILE] [--scenario NAME ...]

`make bench` builds mdhunt, bench/measure and bench/floor_parse and runs
this script.  It generates the data once a day and keeps it in WORK/data.
It starts bench/serve.py on loopback and measures each scenario, the
floor and the peers: a warm-up run, then --runs measured runs each.  It
checks that every program found the same new devices, then writes the
medians to BENCHMARKS.md and every sample to WORK/results.json.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True
BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import data  # noqa: E402
import fill  # noqa: E402
import harness  # noqa: E402
import report  # noqa: E402
import serve  # noqa: E402

PYTHON = "/usr/bin/python3"
START_RULE = os.path.join(REPO, "config", "rules",
                          "rmm-zohoassist-file-signature.yaml")
START_RULE_ID = "ba1e02dc-2731-4f65-bdd3-b293e0490e9a"
# The text only the starting rule's query contains.
START_MARKER = "Signer has 'Zoho'"
GRAPH_PATH = "/v1.0/security/runHuntingQuery"
# libcurl's default CA bundle on Debian, which mdhunt loads before adding
# [api] ca_file.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# Bump when the generated data changes shape, to regenerate it.
DATA_VERSION = 1
OTHER_RULES = 49
CYCLE_RULES = 200
SMALL_ROWS = 20
# The ids of the 200-rule cycle's rules start here, apart from the 49.
CYCLE_FIRST_RULE = 1001
SERVER_START_TIMEOUT = 30
COMMAND_TIMEOUT = 600
# Candidate values for the rate budget keys, tried in order: the first
# that the configuration accepts lifts the budget.
BUDGET_KEYS = ("max_calls_per_minute", "max_calls_per_hour")
BUDGET_VALUES = ("1000000", "100000", "10000", "1000")


def log(message):
    print("bench: " + message, file=sys.stderr, flush=True)


class BenchError(Exception):
    """A step of the benchmark failed; the message names the step."""


def tail(path, lines=20):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return ""


class Server:
    """bench/serve.py running on loopback with a set of replies."""

    def __init__(self, state_dir, default_reply, replies=(), log_path=None):
        self.state_dir = state_dir
        self.args = [PYTHON, os.path.join(BENCH, "serve.py"),
                     "--state", state_dir, "--default", default_reply]
        for marker, path in replies:
            self.args += ["--reply", "%s=%s" % (marker, path)]
        self.log_path = log_path or os.path.join(state_dir, "serve.log")
        self.process = None
        self.url = None

    def __enter__(self):
        port_file = os.path.join(self.state_dir, "port")
        os.makedirs(self.state_dir, exist_ok=True)
        if os.path.exists(port_file):
            os.unlink(port_file)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError("serve.py exited with status %d: %s"
                                 % (self.process.returncode,
                                    tail(self.log_path)))
            try:
                with open(port_file, encoding="ascii") as f:
                    self.url = "https://127.0.0.1:%d" % int(f.read())
                return self
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
        self.__exit__()
        raise BenchError("serve.py wrote no port within %d s"
                         % SERVER_START_TIMEOUT)

    def __exit__(self, *exc):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    @property
    def ca_file(self):
        return os.path.join(self.state_dir, "ca.pem")


class Paths:
    """Paths of the benchmark's data, stores and logs."""

    def __init__(self, work):
        self.work = work
        self.data = os.path.join(work, "data")
        self.state = os.path.join(self.data, "server")
        self.run = os.path.join(work, "run")
        self.logs = os.path.join(work, "logs")
        self.secret = os.path.join(self.data, "client_secret")
        self.rules50 = os.path.join(self.data, "rules50")
        self.rules200 = os.path.join(self.data, "rules200")
        self.reply_large = os.path.join(self.data, "reply-100k.json")
        self.reply_small = os.path.join(self.data, "reply-small.json")
        self.reply_empty = os.path.join(self.data, "reply-empty.json")
        self.query = os.path.join(self.data, "start-query.kql")
        self.request = os.path.join(self.data, "start-request.json")
        self.expected_new = os.path.join(self.data, "expected-new.txt")
        self.store_template = os.path.join(self.data, "store.db")
        self.peer_template = os.path.join(self.data, "peer.db")
        self.stamp = os.path.join(self.data, "stamp.json")
        self.measure = os.path.join(work, "measure")
        self.floor_parse = os.path.join(work, "floor_parse")

    def in_run(self, name):
        return os.path.join(self.run, name)

    def in_logs(self, name):
        return os.path.join(self.logs, name)


def write_config(path, server, paths, rules, store, api_extra=()):
    lines = [
        "[auth]",
        "tenant_id = " + serve.TENANT_ID,
        "client_id = " + serve.CLIENT_ID,
        "client_secret_file = " + paths.secret,
        "authority_url = " + server.url,
        "",
        "[api]",
        "backend = graph",
        "url = " + server.url,
        "ca_file = " + server.ca_file,
    ]
    lines += ["%s = %s" % kv for kv in api_extra]
    lines += ["", "[rules]", "path = " + rules,
              "", "[store]", "path = " + store, ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path


def remove_store(path):
    """Remove a store and the files mdhunt keeps beside it (-wal, -shm,
    .lock, the rate budget's file)."""
    for name in glob.glob(glob.escape(path) + "*"):
        os.unlink(name)


def checkpoint(path):
    """Move everything in a store's WAL into its main file, so that
    copying the main file copies the whole store."""
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def copy_store(template, path):
    remove_store(path)
    shutil.copyfile(template, path)


def run_checked(args, what, log_name, paths, stdout=subprocess.DEVNULL,
                env=None):
    """Run a setup or check command; raise BenchError when it fails."""
    log_path = paths.in_logs(log_name)
    with open(log_path, "ab") as err:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=stdout,
                              stderr=err, env=env, timeout=COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise BenchError("%s failed with status %d (%s):\n%s"
                         % (what, done.returncode, log_path, tail(log_path)))
    return done


def mdhunt_output(paths, mdhunt, config, args, log_name):
    out = run_checked([mdhunt, "-c", config] + args,
                      "mdhunt " + " ".join(args), log_name, paths,
                      stdout=subprocess.PIPE)
    return out.stdout.decode("utf-8")


# ---- Measuring -------------------------------------------------------------

def measure(paths, name, args, stdout=None, env=None, expect_exit=0):
    """Run args under bench/measure; returns its sample (a dict)."""
    result = paths.in_run("measure.json")
    log_path = paths.in_logs(name + ".log")
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL
    try:
        with open(log_path, "ab") as err:
            done = subprocess.run([paths.measure, result] + list(args),
                                  stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=err, env=env,
                                  timeout=COMMAND_TIMEOUT)
    finally:
        if stdout:
            out.close()
    if done.returncode != 0:
        raise BenchError("measure could not run %s: %s"
                         % (name, tail(log_path)))
    with open(result, encoding="utf-8") as f:
        sample = json.load(f)
    if sample["exit"] != expect_exit:
        raise BenchError("%s exited with status %d (signal %d), expected "
                         "%d; see %s:\n%s" % (name, sample["exit"],
                                              sample["signal"], expect_exit,
                                              log_path, tail(log_path)))
    sample["cpu_s"] = sample["user_s"] + sample["sys_s"]
    return sample


class Program:
    """A command to measure.  before() runs untimed before each run, and
    check(index) after it, with index -1 for the warm-up."""

    def __init__(self, name, args, before=None, check=None, stdout=None,
                 env=None):
        self.name = name
        self.args = args
        self.before = before
        self.check = check
        self.stdout = stdout
        self.env = env


def rotate(paths, runs, programs):
    """Measure programs in turn: a warm-up round, then `runs` measured
    rounds, so that a change of the machine's load between rounds affects
    every program alike.  Returns {name: {command, samples, stats}}."""
    samples = {p.name: [] for p in programs}
    for i in range(-1, runs):
        for p in programs:
            if p.before is not None:
                p.before()
            sample = measure(paths, p.name, p.args, stdout=p.stdout,
                             env=p.env)
            if p.check is not None:
                p.check(i)
            if i >= 0:
                samples[p.name].append(sample)
    results = {}
    for p in programs:
        got = samples[p.name]
        log("%-28s wall %s s, cpu %s s, rss %.0f MiB" % (
            p.name, fmt_median(got, "wall_s"), fmt_median(got, "cpu_s"),
            statistics.median(s["max_rss_kib"] for s in got) / 1024))
        results[p.name] = {"command": p.args, "samples": got,
                           "stats": summarize(got)}
    return results


def summarize(samples):
    stats = {}
    for key in ("wall_s", "user_s", "sys_s", "cpu_s", "max_rss_kib"):
        values = [s[key] for s in samples]
        stats[key] = {"median": statistics.median(values),
                      "min": min(values), "max": max(values)}
    return stats


def fmt_median(samples, key):
    return "%.3f" % statistics.median(s[key] for s in samples)


# ---- Data -------------------------------------------------------------------

def data_is_current(paths):
    try:
        with open(paths.stamp, encoding="utf-8") as f:
            stamp = json.load(f)
    except (FileNotFoundError, ValueError):
        return False
    return (stamp.get("version") == DATA_VERSION
            and stamp.get("date") == datetime.date.today().isoformat())


def write_secret(path):
    # No trailing newline: curl's --data-urlencode name@file sends the
    # file's bytes as they are.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(serve.SECRET)


def prepare_data(paths, mdhunt, force=False):
    """Generate replies, rules and the pre-filled stores, unless today's
    are present."""
    if not force and data_is_current(paths):
        log("reusing the data in %s (generated today)" % paths.data)
        return
    log("generating the data in %s" % paths.data)
    shutil.rmtree(paths.data, ignore_errors=True)
    os.makedirs(paths.data)
    reference = datetime.datetime.now(datetime.timezone.utc).replace(
        microsecond=0)
    start = data.StartRuleData()

    write_secret(paths.secret)
    other_ids = data.write_rules(paths.rules50, OTHER_RULES,
                                 start_rule=START_RULE)
    data.write_rules(paths.rules200, CYCLE_RULES, first=CYCLE_FIRST_RULE)
    size = data.write_graph_reply(paths.reply_large,
                                  start.result_rows(reference))
    data.write_graph_reply(paths.reply_small, [
        data.device_row("small", i, reference, random.Random(5))
        for i in range(SMALL_ROWS)])
    data.write_graph_reply(paths.reply_empty, [])
    query = harness.expected_query(START_RULE)
    with open(paths.query, "wb") as f:
        f.write(query)
    with open(paths.request, "w", encoding="utf-8") as f:
        json.dump({"Query": query.decode("utf-8")}, f)
    with open(paths.expected_new, "w", encoding="ascii") as f:
        f.write("".join(d + "\n" for d in start.new_device_ids()))
    log("reply of %d rows: %.1f MiB" % (start.rows, size / 2**20))

    # mdhunt creates the store and one baseline run per rule.
    with Server(paths.state, paths.reply_empty) as server:
        config = write_config(paths.in_run("fill.ini"), server, paths,
                              paths.rules50, paths.store_template)
        remove_store(paths.store_template)
        run_checked([mdhunt, "-c", config, "run", "--once", "--all"],
                    "creating the store with mdhunt", "fill.log", paths)
    log("filling the store with 1,000,000 entities")
    counts = fill.fill_mdhunt_store(paths.store_template, START_RULE_ID,
                                    other_ids, start, reference)
    remove_store(paths.store_template + ".lock")
    fill.fill_peer_store(paths.peer_template, paths.store_template)
    with open(paths.stamp, "w", encoding="utf-8") as f:
        json.dump({"version": DATA_VERSION,
                   "date": datetime.date.today().isoformat(),
                   "reference": reference.isoformat(),
                   "entities": sum(counts.values()),
                   "start_rule_entities": counts[START_RULE_ID],
                   "reply_bytes": size}, f)


def check_store(paths, mdhunt):
    with Server(paths.state, paths.reply_empty) as server:
        return check_store_readable(paths, mdhunt, server)


def check_store_readable(paths, mdhunt, server):
    """Check that mdhunt's status and devices read the pre-filled store."""
    store = paths.in_run("check.db")
    copy_store(paths.store_template, store)
    config = write_config(paths.in_run("check.ini"), server, paths,
                          paths.rules50, store)
    status = json.loads(mdhunt_output(paths, mdhunt, config,
                                      ["status", "--format", "json"],
                                      "check-store.log"))
    devices = mdhunt_output(paths, mdhunt, config,
                            ["devices", "--rule", START_RULE_ID,
                             "--format", "csv"], "check-store.log")
    remove_store(store)
    rules = status.get("rules", status) if isinstance(status, dict) \
        else status
    with open(paths.stamp, encoding="utf-8") as f:
        expected = json.load(f)["start_rule_entities"]
    found = len(devices.splitlines()) - 1
    if found != expected:
        raise BenchError("mdhunt devices listed %d devices of the starting "
                         "rule, the store holds %d" % (found, expected))
    return {"rules_in_status": len(rules), "start_rule_devices": found}


# ---- Scenarios --------------------------------------------------------------

def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def peer_env(paths, server, db):
    # requests lets $REQUESTS_CA_BUNDLE and $CURL_CA_BUNDLE override the
    # CA file a session was given, so the peers run without them.
    env = {k: v for k, v in os.environ.items()
           if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update({
        "TENANT_ID": serve.TENANT_ID, "CLIENT_ID": serve.CLIENT_ID,
        "CLIENT_SECRET_FILE": paths.secret, "LOGIN_URL": server.url,
        "GRAPH_URL": server.url, "CA_FILE": trust_bundle(paths, server),
        "RULE_ID": START_RULE_ID, "QUERY_FILE": paths.query, "DB": db,
    })
    return env


def trust_bundle(paths, server):
    """Write the CA certificates mdhunt trusts, the system's bundle and
    the server's CA, into one file for curl and the peers.  Each program
    then parses the same certificates before its first handshake."""
    path = paths.in_run("trust.pem")
    with open(path, "wb") as out:
        if os.path.exists(SYSTEM_CA_BUNDLE):
            with open(SYSTEM_CA_BUNDLE, "rb") as f:
                out.write(f.read())
        with open(server.ca_file, "rb") as f:
            out.write(f.read())
    return path


def floor_commands(paths, server):
    curl = ["curl", "-sS", "--fail", "--cacert", trust_bundle(paths, server),
            "-H", "Authorization: Bearer " + serve.ACCESS_TOKEN,
            "-H", "Content-Type: application/json",
            "--data-binary", "@" + paths.request, "-o", "/dev/null",
            server.url + GRAPH_PATH]
    parse = [paths.floor_parse, paths.reply_large]
    return curl, parse


def floor_programs(paths, server):
    curl, parse = floor_commands(paths, server)
    rows_file = paths.in_run("floor-rows.txt")

    def check_parse(_):
        rows = read_lines(rows_file)
        if rows != ["100000"]:
            raise BenchError("floor_parse counted %s rows, expected 100000"
                             % rows)

    return [Program("floor-curl", curl),
            Program("floor-parse", parse, check=check_parse,
                    stdout=rows_file)]


def hunt_program(paths, mdhunt, server):
    config = write_config(paths.in_run("hunt.ini"), server, paths,
                          paths.rules50, paths.in_run("hunt-unused.db"))
    args = [mdhunt, "-c", config, "hunt", "--format", "csv", START_RULE]
    out = paths.in_run("hunt.csv")
    # This run writes the CSV to check it.  The measured runs write to
    # /dev/null like the floor's curl.
    measure(paths, "hunt-check", args, stdout=out)
    with open(out, "rb") as f:
        lines = f.read().count(b"\n")
    os.unlink(out)
    if lines != 100001:
        raise BenchError("mdhunt hunt --format csv wrote %d lines, "
                         "expected a header and 100000 rows" % lines)
    return Program("hunt-csv", args)


def mdhunt_new_devices(paths, mdhunt, config):
    doc = json.loads(mdhunt_output(paths, mdhunt, config,
                                   ["diff", "--rule", START_RULE_ID,
                                    "--format", "json"], "check-diff.log"))
    new = sorted(row["DeviceId"] for row in doc["new"])
    return new, {k: len(doc[k]) for k in ("new", "gone", "returned",
                                          "renamed", "baseline_rows")}


def run_once_programs(paths, mdhunt, server, runs, checks):
    """Return the programs of scenario 2: mdhunt's run --once and the two
    peers, each on a fresh copy of its pre-filled store and each checked
    against the expected new devices."""
    expected = read_lines(paths.expected_new)
    store = paths.in_run("s2.db")
    config = write_config(paths.in_run("s2.ini"), server, paths,
                          paths.rules50, store)

    def check_mdhunt(i):
        if i not in (-1, runs - 1):
            return
        new, counts = mdhunt_new_devices(paths, mdhunt, config)
        if new != expected:
            raise BenchError("mdhunt reported %d new devices, expected %d"
                             % (len(new), len(expected)))
        checks["mdhunt"] = counts

    programs = [Program(
        "run-once", [mdhunt, "-c", config, "run", "--once", "--rule",
                     START_RULE_ID],
        before=lambda: copy_store(paths.store_template, store),
        check=check_mdhunt)]

    peers = {
        "peer-shell": ["sh", os.path.join(BENCH, "peers", "hunt.sh")],
        "peer-python": [PYTHON, os.path.join(BENCH, "peers", "hunt.py")],
    }
    for name, args in peers.items():
        db = paths.in_run(name + ".db")
        out = paths.in_run(name + "-new.txt")

        def check_peer(_, name=name, out=out):
            new = read_lines(out)
            if new != expected:
                raise BenchError("%s reported %d new devices, expected %d "
                                 "(the list in %s)" % (name, len(new),
                                                       len(expected), out))
            checks[name] = {"new": len(new)}

        programs.append(Program(
            name, args,
            before=lambda db=db: copy_store(paths.peer_template, db),
            check=check_peer, stdout=out, env=peer_env(paths, server, db)))
    return programs, len(expected)


def scenario_large(paths, mdhunt, server, runs, selected):
    """Measure scenarios 1 and 2 and the floor in one rotation."""
    programs = floor_programs(paths, server)
    if "hunt" in selected:
        programs.append(hunt_program(paths, mdhunt, server))
    checks = {}
    if "run-once" in selected:
        more, expected = run_once_programs(paths, mdhunt, server, runs,
                                           checks)
        programs += more
    got = rotate(paths, runs, programs)
    results = {"floor": {"curl": got["floor-curl"],
                         "parse": got["floor-parse"]}}
    if "hunt" in selected:
        results["hunt"] = got["hunt-csv"]
    if "run-once" in selected:
        results["run_once"] = {
            "mdhunt": got["run-once"], "peer-shell": got["peer-shell"],
            "peer-python": got["peer-python"], "checks": checks,
            "expected_new": expected}
    return results


def config_accepts(paths, mdhunt, server, api_extra):
    """Return whether mdhunt accepts the [api] lines api_extra.  `status`
    loads the whole configuration, and a configuration error names its
    key."""
    config = write_config(paths.in_run("probe.ini"), server, paths,
                          paths.rules200, paths.in_run("probe.db"),
                          api_extra)
    done = subprocess.run([mdhunt, "-c", config, "status"],
                          stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=COMMAND_TIMEOUT)
    errors = done.stderr.decode("utf-8", "replace")
    return not any(key in errors for key, _ in api_extra)


def lifted_budget(paths, mdhunt, server):
    """Return the [api] lines that lift the rate budget as far as the
    configuration allows, or none when mdhunt has no budget."""
    extra = []
    for key in BUDGET_KEYS:
        for value in BUDGET_VALUES:
            if config_accepts(paths, mdhunt, server, extra + [(key, value)]):
                extra.append((key, value))
                break
    return extra


def curl_cycle_config(paths, server, count):
    """Write a curl config that sends count hunting requests, one per
    rule, over one connection.  They carry a query of the cycle's rules,
    so they get the small reply too."""
    path = paths.in_run("curl-cycle.cfg")
    request = paths.in_run("cycle-request.json")
    query = harness.expected_query(os.path.join(
        paths.rules200, "bench-rule-%03d.yaml" % CYCLE_FIRST_RULE))
    with open(request, "w", encoding="utf-8") as f:
        json.dump({"Query": query.decode("utf-8")}, f)
    block = ("--cacert \"%s\"\n-sS\n--fail\n"
             "-H \"Authorization: Bearer %s\"\n"
             "-H \"Content-Type: application/json\"\n"
             "--data-binary \"@%s\"\n-o /dev/null\nurl = \"%s%s\"\n"
             % (trust_bundle(paths, server), serve.ACCESS_TOKEN, request,
                server.url, GRAPH_PATH))
    with open(path, "w", encoding="utf-8") as f:
        f.write("next\n".join([block] * count))
    return path


def scenario_cycle(paths, mdhunt, server, runs):
    budget = lifted_budget(paths, mdhunt, server)
    store = paths.in_run("s3.db")
    template = paths.in_run("s3-template.db")
    config = write_config(paths.in_run("s3.ini"), server, paths,
                          paths.rules200, store, budget)
    cycle_log = paths.in_logs("cycle.log")

    # Every rule has run once before, as in a daemon's later cycles: the
    # measured runs diff against a known set and are no baselines.
    remove_store(store)
    run_checked([mdhunt, "-c", config, "run", "--once", "--all"],
                "the first 200-rule cycle", "cycle-first.log", paths)
    checkpoint(store)
    remove_store(template)
    shutil.copyfile(store, template)
    done_line = "cycle done: %d runs, %d ok, 0 failed" % (CYCLE_RULES,
                                                          CYCLE_RULES)

    def check(_):
        text = tail(cycle_log, 3)
        if done_line not in text:
            raise BenchError("the 200-rule cycle did not end with \"%s\": "
                             "%s" % (done_line, text))

    def before():
        # Each run starts from the same store, so that every run does the
        # same work and no call count of the rate budget carries over.
        copy_store(template, store)
        open(cycle_log, "w").close()

    got = rotate(paths, runs, [
        Program("cycle", [mdhunt, "-c", config, "run", "--once", "--all"],
                before=before, check=check),
        Program("cycle-curl",
                ["curl", "-K", curl_cycle_config(paths, server,
                                                 CYCLE_RULES)])])
    mdhunt_result, curl_result = got["cycle"], got["cycle-curl"]
    return {"mdhunt": mdhunt_result, "curl": curl_result,
            "rules": CYCLE_RULES, "budget": budget}


def task_counters(pid):
    """Sum CPU time (ns) and context switches over the threads of pid."""
    cpu_ns = voluntary = involuntary = 0
    tasks = os.listdir("/proc/%d/task" % pid)
    for tid in tasks:
        base = "/proc/%d/task/%s/" % (pid, tid)
        try:
            with open(base + "schedstat", encoding="ascii") as f:
                cpu_ns += int(f.read().split()[0])
            with open(base + "status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
        except FileNotFoundError:
            continue
    return {"cpu_ns": cpu_ns, "wakeups": voluntary + involuntary,
            "threads": len(tasks)}


def scenario_idle(paths, mdhunt, server, windows, seconds):
    store = paths.in_run("s4.db")
    remove_store(store)
    config = write_config(paths.in_run("s4.ini"), server, paths,
                          paths.rules50, store)
    run_checked([mdhunt, "-c", config, "run", "--once", "--all"],
                "the first cycle before the idle daemon", "idle.log", paths)
    log_path = paths.in_logs("idle-daemon.log")
    with open(log_path, "ab") as err:
        daemon = subprocess.Popen([mdhunt, "-c", config, "run"],
                                  stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=err)
    try:
        # Let start-up (rules, store, TLS set-up) finish first.
        time.sleep(3)
        if daemon.poll() is not None:
            raise BenchError("the daemon exited with status %d: %s"
                             % (daemon.returncode, tail(log_path)))
        samples = []
        before = task_counters(daemon.pid)
        window = seconds / windows
        for _ in range(windows):
            time.sleep(window)
            after = task_counters(daemon.pid)
            samples.append({
                "seconds": window,
                "cpu_ms": (after["cpu_ns"] - before["cpu_ns"]) / 1e6,
                "wakeups": after["wakeups"] - before["wakeups"],
                "threads": after["threads"]})
            before = after
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            status = daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            status = daemon.wait()
    log("idle daemon: %.1f ms CPU, %d wake-ups in %d s" % (
        sum(s["cpu_ms"] for s in samples), sum(s["wakeups"] for s in samples),
        seconds))
    return {"samples": samples, "exit_on_sigterm": status,
            "command": [mdhunt, "-c", config, "run"]}


# ---- Machine ----------------------------------------------------------------

def load_average():
    return "%.2f %.2f %.2f" % os.getloadavg()


def command_line(args):
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "(not available)"
    text = (done.stdout or done.stderr).decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else "(no output)"


def cpu_model():
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_total_gib():
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def python_module_version(name):
    return command_line([PYTHON, "-c", "import %s; print(%s.__version__)"
                         % (name, name)])


def machine(mdhunt):
    with open("/etc/debian_version", encoding="ascii") as f:
        debian = f.read().strip()
    revision = command_line(["git", "-C", REPO, "rev-parse", "--short",
                             "HEAD"])
    dirty = command_line(["git", "-C", REPO, "status", "--porcelain",
                          "--untracked-files=no"])
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "memory_gib": round(mem_total_gib(), 1),
        "kernel": platform.release(), "debian": debian,
        "versions": {
            "mdhunt": command_line([mdhunt, "--version"]),
            "git": revision + ("" if dirty == "(no output)"
                               else " with local changes"),
            "cc": command_line(["cc", "--version"]),
            "libcurl": command_line(["pkg-config", "--modversion",
                                     "libcurl"]),
            "jansson": command_line(["pkg-config", "--modversion",
                                     "jansson"]),
            "sqlite": command_line(["pkg-config", "--modversion",
                                    "sqlite3"]),
            "openssl": command_line(["openssl", "version"]),
            "curl": command_line(["curl", "--version"]),
            "jq": command_line(["jq", "--version"]),
            "sqlite3 shell": command_line(["sqlite3", "--version"]),
            "python": command_line([PYTHON, "--version"]),
            "msal": python_module_version("msal"),
            "requests": python_module_version("requests"),
        },
    }


# ---- Main -------------------------------------------------------------------

# The floor is always measured: scenarios 1 and 2 are compared with it.
SCENARIOS = ("hunt", "run-once", "cycle", "idle")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5,
                        help="measured runs per program after the warm-up "
                             "(default 5)")
    parser.add_argument("--idle-seconds", type=float, default=60,
                        help="how long the idle daemon is watched "
                             "(default 60)")
    parser.add_argument("--work", default=os.path.join(REPO, "build",
                                                       "bench"),
                        help="directory for data, stores and logs "
                             "(default build/bench)")
    parser.add_argument("--mdhunt", default=os.path.join(REPO, "build",
                                                         "mdhunt"),
                        help="the binary to measure (default build/mdhunt)")
    parser.add_argument("--output", default=os.path.join(REPO,
                                                         "BENCHMARKS.md"),
                        help="the report to write (default BENCHMARKS.md)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only these scenarios; the report is "
                             "written only when all run")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    selected = args.scenario or list(SCENARIOS)

    paths = Paths(os.path.abspath(args.work))
    mdhunt = os.path.abspath(args.mdhunt)
    for tool in (mdhunt, paths.measure, paths.floor_parse):
        if not os.access(tool, os.X_OK):
            raise SystemExit("bench: %s is missing; run make bench" % tool)
    shutil.rmtree(paths.logs, ignore_errors=True)
    for d in (paths.run, paths.logs):
        os.makedirs(d, exist_ok=True)

    started = time.monotonic()
    results = {"started": datetime.datetime.now(datetime.timezone.utc)
               .isoformat(timespec="seconds"), "runs": args.runs,
               "machine": machine(mdhunt),
               "load": {"start": load_average()}}
    try:
        prepare_data(paths, mdhunt)
        try:
            results["store_check"] = check_store(paths, mdhunt)
        except BenchError as e:
            # A store made by an older mdhunt needs an upgrade, which
            # must not be timed: make the data again with this one.
            log("the pre-filled store does not suit this mdhunt (%s); "
                "generating the data again" % e)
            prepare_data(paths, mdhunt, force=True)
            results["store_check"] = check_store(paths, mdhunt)
        with open(paths.stamp, encoding="utf-8") as f:
            results["data"] = json.load(f)
        with Server(paths.state, paths.reply_small,
                    [(START_MARKER, paths.reply_large)]) as server:
            results.update(scenario_large(paths, mdhunt, server,
                                          args.runs, selected))
            if "cycle" in selected:
                results["cycle"] = scenario_cycle(paths, mdhunt, server,
                                                  args.runs)
            if "idle" in selected:
                results["idle"] = scenario_idle(paths, mdhunt, server,
                                                max(args.runs, 5),
                                                args.idle_seconds)
    except BenchError as e:
        log(str(e))
        return 1
    results["duration_s"] = time.monotonic() - started
    results["load"]["end"] = load_average()

    with open(os.path.join(paths.work, "results.json"), "w",
              encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    if len(selected) == len(SCENARIOS):
        report.write(args.output, results)
        log("wrote %s in %.0f s" % (args.output, results["duration_s"]))
    else:
        log("results in %s; BENCHMARKS.md is written only when every "
            "scenario runs" % os.path.join(paths.work, "results.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
