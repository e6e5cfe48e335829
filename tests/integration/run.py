#!/usr/bin/python3
"""Run the integration tests: tests/integration/test_*.py (unittest).

Usage: /usr/bin/python3 tests/integration/run.py [PATTERN ...]

Prints one line per test, then the details of each failure, then
"integration: N skipped", and as the last line
"integration: N passed, N failed".  Errors count as failures.  A PATTERN
keeps only tests whose id contains it.  Exits 0 only when nothing failed.
The mdhunt binary comes from $MDHUNT_BIN (default build/mdhunt).
"""

import os
import sys
import time
import unittest

# Keep __pycache__ out of the source tree.
sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


class LineResult(unittest.TestResult):
    """A result that prints one line per finished test."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream
        self.passed = 0
        self._current = None
        self._started = 0.0

    def _line(self, status, test, note=""):
        elapsed = 0.0
        if test is self._current:
            elapsed = time.monotonic() - self._started
        self.stream.write("%-5s %s (%.1fs)%s\n"
                          % (status, test.id(), elapsed,
                             ": " + note if note else ""))
        self.stream.flush()

    def startTest(self, test):
        super().startTest(test)
        self._current = test
        self._started = time.monotonic()

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1
        self._line("ok", test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._line("FAIL", test)

    def addError(self, test, err):
        super().addError(test, err)
        self._line("ERROR", test)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._line("skip", test, reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.passed += 1
        self._line("ok", test, "expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._line("FAIL", test, "unexpected success")


def _flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def _load(patterns):
    sys.path.insert(0, HERE)
    loader = unittest.TestLoader()
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = list(_flatten(suite))
    if patterns:
        tests = [t for t in tests if any(p in t.id() for p in patterns)]
    return unittest.TestSuite(tests)


def main(argv):
    os.chdir(REPO)
    suite = _load(argv[1:])
    result = LineResult(sys.stdout)
    suite.run(result)

    problems = ([("FAIL", t, tb) for t, tb in result.failures]
                + [("ERROR", t, tb) for t, tb in result.errors])
    for status, test, trace in problems:
        print("\n=== %s %s\n%s" % (status, test.id(), trace.rstrip()))
    failed = (len(result.failures) + len(result.errors)
              + len(result.unexpectedSuccesses))
    if problems:
        print()
    print("integration: %d skipped" % len(result.skipped))
    print("integration: %d passed, %d failed" % (result.passed, failed))
    sys.stdout.flush()
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
