"""Write BENCHMARKS.md from the results of bench/run.py."""

import os
import statistics

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
HISTORY = os.path.join(BENCH, "history.md")

TIME_FACTOR = 2.0       # scenario 2: wall time within 2x the floor's
RSS_FACTOR = 1.5        # scenario 2: peak RSS within 1.5x the floor's
CPU_PER_RULE_MS = 1.0   # scenario 3: CPU per rule beyond the network


def med(result, key):
    return result["stats"][key]["median"]


def span(result, key, scale=1.0, digits=2):
    s = result["stats"][key]
    return "%.*f (%.*f–%.*f)" % (digits, s["median"] * scale, digits,
                                 s["min"] * scale, digits, s["max"] * scale)


def mib(result):
    return span(result, "max_rss_kib", 1 / 1024, 0)


def shown(args):
    """Format a command as text, with the repository's path made relative."""
    words = []
    for a in args:
        a = a.replace(REPO + "/", "")
        words.append("'%s'" % a if " " in a else a)
    return " ".join(words)


def row(name, result):
    return "| %s | %s | %s | %s | %s |" % (
        name, span(result, "wall_s"), span(result, "cpu_s"),
        span(result, "user_s"), mib(result))


TABLE_HEAD = ("| program | wall s | CPU s (user+sys) | user s | peak RSS MiB |\n"
              "|---|---|---|---|---|")


class Floor:
    """The floor of the large reply: curl's fetch plus jansson's parse."""

    def __init__(self, floor):
        self.curl = floor["curl"]
        self.parse = floor["parse"]
        self.wall = med(self.curl, "wall_s") + med(self.parse, "wall_s")
        self.cpu = med(self.curl, "cpu_s") + med(self.parse, "cpu_s")
        self.rss_kib = max(med(self.curl, "max_rss_kib"),
                           med(self.parse, "max_rss_kib"))

    def rows(self):
        return "\n".join([
            row("floor: curl to /dev/null", self.curl),
            row("floor: floor_parse (jansson)", self.parse),
            "| floor: fetch plus parse (sum of medians) | %.2f | %.2f | – "
            "| %.0f |" % (self.wall, self.cpu, self.rss_kib / 1024),
        ])


def verdict(ok):
    return "**met**" if ok else "**missed**"


def targets(results, floor):
    s2 = results["run_once"]
    mdhunt = s2["mdhunt"]
    lines = ["| target | measured (medians) | result |", "|---|---|---|"]

    wall = med(mdhunt, "wall_s")
    lines.append("| 2: `run --once` wall time ≤ %.0fx the floor's fetch "
                 "plus parse | %.2f s vs %.2f s: %.2fx | %s |" % (
                     TIME_FACTOR, wall, floor.wall, wall / floor.wall,
                     verdict(wall <= TIME_FACTOR * floor.wall)))
    rss = med(mdhunt, "max_rss_kib")
    lines.append("| 2: peak RSS ≤ %.1fx the floor's | %.0f MiB vs %.0f MiB: "
                 "%.2fx | %s |" % (RSS_FACTOR, rss / 1024,
                                   floor.rss_kib / 1024,
                                   rss / floor.rss_kib,
                                   verdict(rss <= RSS_FACTOR * floor.rss_kib)))

    for name, label in (("peer-shell", "the curl + jq + sqlite3 script"),
                        ("peer-python", "the MSAL + requests script")):
        peer = med(s2[name], "wall_s")
        lines.append("| 2: faster than %s | %.2f s vs %.2f s: %.2fx | %s |"
                     % (label, wall, peer, wall / peer,
                        verdict(wall < peer)))

    per_rule = cycle_per_rule(results["cycle"])
    lines.append("| 3: < %.0f ms CPU per rule beyond the network | %.2f ms "
                 "| %s |" % (CPU_PER_RULE_MS, per_rule["beyond_ms"],
                             verdict(per_rule["beyond_ms"]
                                     < CPU_PER_RULE_MS)))
    idle = idle_totals(results["idle"])
    lines.append("| 4: no periodic wake-ups while nothing is due | %d "
                 "wake-ups, %.1f ms CPU in %.0f s | %s |" % (
                     idle["wakeups"], idle["cpu_ms"], idle["seconds"],
                     verdict(idle["wakeups"] == 0)))
    return "\n".join(lines)


def cycle_per_rule(cycle):
    n = cycle["rules"]
    mdhunt = med(cycle["mdhunt"], "cpu_s") * 1000 / n
    curl = med(cycle["curl"], "cpu_s") * 1000 / n
    return {"mdhunt_ms": mdhunt, "curl_ms": curl,
            "beyond_ms": mdhunt - curl}


def idle_totals(idle):
    samples = idle["samples"]
    return {"wakeups": sum(s["wakeups"] for s in samples),
            "cpu_ms": sum(s["cpu_ms"] for s in samples),
            "seconds": sum(s["seconds"] for s in samples),
            "threads": max(s["threads"] for s in samples)}


def section_hunt(results, floor):
    hunt = results["hunt"]
    wall = med(hunt, "wall_s")
    return "\n".join([
        "## Scenario 1: `mdhunt hunt --format csv` of 100,000 rows",
        "",
        "One query through Graph, the reply parsed into mdhunt's table "
        "and written as CSV to /dev/null.  The first run's CSV was "
        "checked: a header and 100,000 rows.",
        "",
        TABLE_HEAD,
        row("mdhunt hunt --format csv", hunt),
        floor.rows(),
        "",
        "mdhunt/floor: wall %.2fx, CPU %.2fx, peak RSS %.2fx." % (
            wall / floor.wall, med(hunt, "cpu_s") / floor.cpu,
            med(hunt, "max_rss_kib") / floor.rss_kib),
        "",
    ])


def section_run_once(results, floor):
    s2 = results["run_once"]
    mdhunt = s2["mdhunt"]
    checks = s2["checks"]
    counts = checks.get("mdhunt", {})
    lines = [
        "## Scenario 2: `mdhunt run --once` of the starting rule against "
        "1,000,000 entities",
        "",
        "The ZohoAssist rule's 100,000-row result: token, query over "
        "loopback TLS, parse, load the rule's 100,000 known entities, "
        "diff, store the rows, entities and events in one transaction, "
        "queue nothing (no [mail]).  Every run starts from a copy of the "
        "pre-filled store.  The peers do the same fetch, store and diff "
        "on a copy of their own store holding the same 1,000,000 devices.",
        "",
        TABLE_HEAD,
        row("mdhunt run --once", mdhunt),
        floor.rows(),
        row("peer: curl + jq + sqlite3 (bench/peers/hunt.sh)",
            s2["peer-shell"]),
        row("peer: MSAL + requests + sqlite3 (bench/peers/hunt.py)",
            s2["peer-python"]),
        "",
        "mdhunt/floor: wall %.2fx, CPU %.2fx, peak RSS %.2fx." % (
            med(mdhunt, "wall_s") / floor.wall,
            med(mdhunt, "cpu_s") / floor.cpu,
            med(mdhunt, "max_rss_kib") / floor.rss_kib),
    ]
    for name in ("peer-shell", "peer-python"):
        peer = s2[name]
        lines.append("mdhunt/%s: wall %.2fx, CPU %.2fx, peak RSS %.2fx." % (
            name, med(mdhunt, "wall_s") / med(peer, "wall_s"),
            med(mdhunt, "cpu_s") / med(peer, "cpu_s"),
            med(mdhunt, "max_rss_kib") / med(peer, "max_rss_kib")))
    lines += [
        "",
        "Correctness: mdhunt (`mdhunt diff --format json`, after the "
        "warm-up and the last run) and both peers (every run) reported "
        "the same {:,} new DeviceIds, the list the data generator "
        "expected.  mdhunt also reported {} renamed devices and {} gone: "
        "a result of exactly 100,000 rows may be cut at the service's "
        "limit, so mdhunt reports no device gone from it.".format(
            s2["expected_new"], counts.get("renamed", 0),
            counts.get("gone", 0)),
        "",
    ]
    return "\n".join(lines)


def section_cycle(results):
    cycle = results["cycle"]
    per = cycle_per_rule(cycle)
    budget = cycle["budget"]
    budget_text = (", ".join("`%s = %s`" % tuple(kv) for kv in budget)
                   if budget else "none: this mdhunt has no rate budget")
    return "\n".join([
        "## Scenario 3: a cycle of %d rules with small results" %
        cycle["rules"],
        "",
        "`mdhunt run --once --all` over %d generated rules, each result "
        "20 rows, on a copy of a store where every rule ran once before, "
        "so each run diffs 20 rows against 20 known devices.  The "
        "network floor is one curl process sending the same %d hunting "
        "requests over one kept-alive connection.  Rate budget lifted "
        "with %s." % (cycle["rules"], cycle["rules"], budget_text),
        "",
        TABLE_HEAD,
        row("mdhunt run --once --all", cycle["mdhunt"]),
        row("curl, %d requests" % cycle["rules"], cycle["curl"]),
        "",
        "CPU per rule: mdhunt %.2f ms, curl %.2f ms, mdhunt beyond the "
        "network %.2f ms (the difference of the medians, divided by %d)."
        % (per["mdhunt_ms"], per["curl_ms"], per["beyond_ms"],
           cycle["rules"]),
        "",
    ])


def section_idle(results):
    idle = results["idle"]
    totals = idle_totals(idle)
    lines = [
        "## Scenario 4: the idle daemon",
        "",
        "`mdhunt run` (the daemon) with the 50 rules, each run once just "
        "before, so none is due for a day.  After 3 s of start-up, its "
        "threads' CPU time (/proc/PID/task/*/schedstat) and context "
        "switches (voluntary and involuntary, /proc/PID/task/*/status; "
        "each wake-up from a sleep is one) were read every %.0f s." % (
            idle["samples"][0]["seconds"]),
        "",
        "| window | seconds | CPU ms | wake-ups | threads |",
        "|---|---|---|---|---|",
    ]
    for i, s in enumerate(idle["samples"], 1):
        lines.append("| %d | %.0f | %.2f | %d | %d |" % (
            i, s["seconds"], s["cpu_ms"], s["wakeups"], s["threads"]))
    lines += [
        "| total | %.0f | %.2f | %d | |" % (
            totals["seconds"], totals["cpu_ms"], totals["wakeups"]),
        "",
        "Median per window: %.2f ms CPU, %d wake-ups.  The daemon exited "
        "with status %d on SIGTERM." % (
            statistics.median(s["cpu_ms"] for s in idle["samples"]),
            statistics.median(s["wakeups"] for s in idle["samples"]),
            idle["exit_on_sigterm"]),
        "",
    ]
    return "\n".join(lines)


def section_method(results):
    m = results["machine"]
    data = results["data"]
    s2 = results["run_once"]
    versions = "\n".join("| %s | %s |" % kv for kv in m["versions"].items())
    commands = [
        ("1", shown(results["hunt"]["command"])),
        ("2", shown(s2["mdhunt"]["command"])),
        ("2 floor", shown(results["floor"]["curl"]["command"])),
        ("2 floor", shown(results["floor"]["parse"]["command"])),
        ("2 peer", shown(s2["peer-shell"]["command"])),
        ("2 peer", shown(s2["peer-python"]["command"])),
        ("3", shown(results["cycle"]["mdhunt"]["command"])),
        ("3 floor", shown(results["cycle"]["curl"]["command"])),
        ("4", shown(results["idle"]["command"])),
    ]
    load = results.get("load", {})
    return "\n".join([
        "## How it was measured",
        "",
        "- Each program ran once as a warm-up and was then measured %d "
        "times; the tables show the median and the min–max.  bench/measure.c runs the "
        "command and reads wall time (CLOCK_MONOTONIC), CPU time and "
        "peak RSS from wait4().  CPU time and RSS include the processes "
        "the command waited for; for the shell peer the RSS is the "
        "largest single process of its pipeline, not their sum."
        % results["runs"],
        "- The server is bench/serve.py on 127.0.0.1: HTTPS with the "
        "fake cloud's throwaway CA, replies rendered once before the "
        "runs.  Its own time is part of every wall time, the floor's "
        "included, and none of the CPU times.",
        "- mdhunt trusts the system's CA bundle plus `[api] ca_file`.  "
        "curl and the peers get the same certificates in one file, so "
        "every program parses them before its first TLS handshake (about "
        "50 ms of CPU on this machine).",
        "- Data (generated {}): a Graph reply of 100,000 device rows "
        "({:.1f} MiB; DeviceId, DeviceName, FirstSeen, LastSeen, Report, "
        "Count); a store of {:,} entities across 50 rules, {:,} of them "
        "the starting rule's, with 30 daily runs per rule.  1,000 of the "
        "result's devices are unknown to the store, 100 carry a new "
        "name.  See bench/data.py and bench/fill.py.".format(
            data["reference"][:10], data["reply_bytes"] / 2**20,
            data["entities"], data["start_rule_entities"]),
        "- mdhunt read the pre-filled store back: `mdhunt status` listed "
        "{} rules and `mdhunt devices` the starting rule's {:,} devices."
        .format(results["store_check"]["rules_in_status"],
                results["store_check"]["start_rule_devices"]),
        "- The machine is shared: load average %s at the start and %s at "
        "the end of the run.  Wall times vary with it more than CPU "
        "times do." % (load.get("start", "?"), load.get("end", "?")),
        "",
        "Commands (paths relative to the repository; WORK is build/bench):",
        "",
        "| scenario | command |",
        "|---|---|",
    ] + ["| %s | `%s` |" % (k, v.replace("|", "\\|")) for k, v in commands]
      + [
        "",
        "Machine: %s, %d cores, %.1f GiB, Linux %s, Debian %s." % (
            m["cpu"], m["cores"], m["memory_gib"], m["kernel"],
            m["debian"]),
        "",
        "| software | version |",
        "|---|---|",
        versions,
        "",
    ])


def history():
    try:
        with open(HISTORY, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def write(path, results):
    floor = Floor(results["floor"])
    minutes = results["duration_s"] / 60
    text = "\n".join([
        "# Benchmarks",
        "",
        "What mdhunt itself costs (wall time, CPU time, peak memory) on "
        "top of the service, against a floor and against the scripts "
        "SOC teams write instead.  This file is written by `make bench` "
        "(bench/run.py); this run started %s and took %.0f minutes.  "
        "`make bench` is not part of `make check` or CI." % (
            results["started"], minutes),
        "",
        "## Targets",
        "",
        targets(results, floor),
        "",
        section_hunt(results, floor),
        section_run_once(results, floor),
        section_cycle(results),
        section_idle(results),
        section_method(results),
        history(),
    ])
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.rstrip("\n") + "\n")
