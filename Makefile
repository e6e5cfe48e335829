# mdhunt: scheduled Microsoft Defender hunting with newly-seen-device diffs.
#
#   make              build build/mdhunt
#   make check        build a test variant (build/test) and run every test
#   make asan         the same under AddressSanitizer + UBSan (build/asan)
#   make install      install binary, example config, rules and man page
#   make demo         the two-run demo against the bundled fake cloud

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
DOCDIR ?= $(PREFIX)/share/doc/mdhunt
DESTDIR ?=

MAKEFLAGS += --no-print-directory

VERSION := 0.1.0

CC ?= cc
PKG_CONFIG ?= pkg-config
PKGS := libcurl jansson openssl inih sqlite3 yaml-0.1

BUILDDIR ?= build
OPT ?= -O2
EXTRA_CFLAGS ?=
EXTRA_LDFLAGS ?=

PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS))
PKG_LIBS := $(shell $(PKG_CONFIG) --libs $(PKGS)) -lm
CMOCKA_CFLAGS := $(shell $(PKG_CONFIG) --cflags cmocka 2>/dev/null)
CMOCKA_LIBS := $(shell $(PKG_CONFIG) --libs cmocka 2>/dev/null)

CFLAGS ?=
MD_CFLAGS := -std=c11 -Wall -Wextra $(OPT) -g -D_GNU_SOURCE \
	-DMDHUNT_VERSION='"$(VERSION)"' -Iinclude $(PKG_CFLAGS) \
	$(EXTRA_CFLAGS) $(CFLAGS)
MD_LDFLAGS := $(EXTRA_LDFLAGS) $(LDFLAGS)

SRCS := $(wildcard src/*.c)
LIB_SRCS := $(filter-out src/main.c,$(SRCS))
LIB_OBJS := $(patsubst src/%.c,$(BUILDDIR)/obj/%.o,$(LIB_SRCS))
HEADERS := $(wildcard include/mdhunt/*.h)

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILDDIR)/unit/%,$(UNIT_SRCS))

SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer

.PHONY: all check asan unit test-run install uninstall clean demo bench \
	memcheck

all: $(BUILDDIR)/mdhunt

$(BUILDDIR)/obj/%.o: src/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(MD_CFLAGS) -c -o $@ $<

$(BUILDDIR)/libmdhunt.a: $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILDDIR)/mdhunt: $(BUILDDIR)/obj/main.o $(BUILDDIR)/libmdhunt.a
	$(CC) $(MD_CFLAGS) -o $@ $^ $(PKG_LIBS) $(MD_LDFLAGS)

$(BUILDDIR)/unit/%: tests/unit/%.c $(BUILDDIR)/libmdhunt.a $(HEADERS) \
		tests/unit/testutil.h
	@mkdir -p $(dir $@)
	$(CC) $(MD_CFLAGS) $(CMOCKA_CFLAGS) -Itests/unit -o $@ $< \
		$(BUILDDIR)/libmdhunt.a $(PKG_LIBS) $(CMOCKA_LIBS) $(MD_LDFLAGS)

unit: $(UNIT_BINS)

# Runs every unit test binary, then the integration tests against the fake
# cloud, and prints "N passed, N failed" last.
test-run: $(BUILDDIR)/mdhunt unit
	tests/run-all $(BUILDDIR)

check:
	$(MAKE) BUILDDIR=build/test EXTRA_CFLAGS=-DMDHUNT_TEST_CLOCK test-run

asan:
	$(MAKE) BUILDDIR=build/asan OPT=-O1 \
		EXTRA_CFLAGS="-DMDHUNT_TEST_CLOCK $(SANITIZE)" \
		EXTRA_LDFLAGS="$(SANITIZE)" test-run

install: $(BUILDDIR)/mdhunt
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 \
		$(DESTDIR)$(SYSCONFDIR)/mdhunt/rules $(DESTDIR)$(DOCDIR)
	install -m 0755 $(BUILDDIR)/mdhunt $(DESTDIR)$(BINDIR)/mdhunt
	install -m 0644 man/mdhunt.1 $(DESTDIR)$(MANDIR)/man1/mdhunt.1
	install -m 0644 config/mdhunt.ini.example \
		$(DESTDIR)$(DOCDIR)/mdhunt.ini.example
	install -m 0644 config/rules/*.yaml $(DESTDIR)$(SYSCONFDIR)/mdhunt/rules/
	install -d $(DESTDIR)$(SYSCONFDIR)/mdhunt/rules-sentinel
	install -m 0644 config/rules-sentinel/*.yaml \
		$(DESTDIR)$(SYSCONFDIR)/mdhunt/rules-sentinel/
	install -m 0644 config/exclusions.yaml.example \
		$(DESTDIR)$(DOCDIR)/exclusions.yaml.example

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/mdhunt $(DESTDIR)$(MANDIR)/man1/mdhunt.1
	rm -rf $(DESTDIR)$(DOCDIR)

clean:
	rm -rf build

# ---- Fuzzing and static analysis (see tests/fuzz/README.md) ----------
#
#   make fuzz-build   build the libFuzzer harnesses of tests/fuzz/ with clang
#   make fuzz-ci      run each harness for FUZZ_TIME seconds (default 30)
#   make fuzz         the same, longer (default 300 seconds per harness)
#   make lint-static  cppcheck and clang-tidy over src/*.c

FUZZ_CC ?= clang
FUZZ_BUILDDIR ?= build/fuzz
FUZZ_TIME ?=
FUZZ_SANITIZE := -fsanitize=address,undefined \
	-fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -Wall -Wextra -O1 -g -D_GNU_SOURCE \
	-DMDHUNT_VERSION='"$(VERSION)"' -Iinclude $(PKG_CFLAGS) \
	$(FUZZ_SANITIZE)
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,\
	$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS := $(addprefix $(FUZZ_BUILDDIR)/fuzz_,$(FUZZ_TARGETS))
FUZZ_LIB_OBJS := $(patsubst src/%.c,$(FUZZ_BUILDDIR)/obj/%.o,$(LIB_SRCS))
FUZZ_HEADERS := $(wildcard tests/fuzz/*.h)

# The library is instrumented for coverage (fuzzer-no-link); only the
# harnesses link libFuzzer's main().
$(FUZZ_BUILDDIR)/obj/%.o: src/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_BUILDDIR)/libmdhunt.a: $(FUZZ_LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(FUZZ_BUILDDIR)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_BUILDDIR)/libmdhunt.a \
		$(HEADERS) $(FUZZ_HEADERS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -Itests/fuzz -o $@ $< \
		$(FUZZ_BUILDDIR)/libmdhunt.a $(PKG_LIBS)

.PHONY: fuzz-build fuzz fuzz-ci lint-static cppcheck clang-tidy

fuzz-build: $(FUZZ_BINS)

fuzz-ci: fuzz-build
	tests/fuzz/run $(FUZZ_BUILDDIR) $(or $(FUZZ_TIME),30) $(FUZZ_TARGETS)

fuzz: fuzz-build
	tests/fuzz/run $(FUZZ_BUILDDIR) $(or $(FUZZ_TIME),300) $(FUZZ_TARGETS)

# cppcheck cannot read <limits.h> and <stdint.h> without the system
# headers, so the two limits that table.c's #if compares are given here.
# Each -D set is one configuration; the test clock's is checked too.
CPPCHECK_FLAGS := --enable=warning,portability,performance --inline-suppr \
	--error-exitcode=1 --quiet --std=c11 -Iinclude -D_GNU_SOURCE \
	-DMDHUNT_VERSION='"$(VERSION)"' \
	-DLLONG_MAX=9223372036854775807LL -DINT64_MAX=9223372036854775807LL
TIDY_JOBS ?= 2

cppcheck:
	cppcheck $(CPPCHECK_FLAGS) src/
	cppcheck $(CPPCHECK_FLAGS) -DMDHUNT_TEST_CLOCK src/

# clang-tidy reads .clang-tidy; one process per file, TIDY_JOBS at once.
clang-tidy:
	printf '%s\n' $(SRCS) | xargs -P $(TIDY_JOBS) -I{} clang-tidy \
		--quiet {} -- -std=c11 -D_GNU_SOURCE \
		-DMDHUNT_VERSION='"$(VERSION)"' -Iinclude $(PKG_CFLAGS)

lint-static: cppcheck clang-tidy

# The fuzzing regression test includes the harness sources.
$(BUILDDIR)/unit/test_fuzz_regressions: $(wildcard tests/fuzz/*.c) \
	$(wildcard tests/fuzz/*.h)

# The two-run demo against the fake cloud and a local mail server; it
# installs missing Debian packages first (through sudo when not root).
demo:
	sh scripts/demo.sh

# The benchmark of mdhunt's own cost against a floor and two peer scripts:
# writes BENCHMARKS.md in 3 to 5 minutes (bench/run.py; the first run of a
# day generates the data).  Not part of check or CI.
BENCH_BIN := $(BUILDDIR)/bench/measure $(BUILDDIR)/bench/floor_parse

$(BUILDDIR)/bench/measure: bench/measure.c
	@mkdir -p $(dir $@)
	$(CC) $(MD_CFLAGS) -o $@ $< $(MD_LDFLAGS)

$(BUILDDIR)/bench/floor_parse: bench/floor_parse.c
	@mkdir -p $(dir $@)
	$(CC) $(MD_CFLAGS) -o $@ $< $(shell $(PKG_CONFIG) --libs jansson) \
		$(MD_LDFLAGS)

bench: $(BUILDDIR)/mdhunt $(BENCH_BIN)
	/usr/bin/python3 bench/run.py --work $(BUILDDIR)/bench \
		--mdhunt $(BUILDDIR)/mdhunt

# ---- Valgrind (not in CI: it takes about 3 minutes on 2 cores) ---------
#
#   make memcheck     run representative integration scenarios with mdhunt
#                     under valgrind; MEMCHECK_TESTS=PATTERN... picks
#                     others (test ids or parts of them, as run.py takes)

MEMCHECK_TESTS ?=

memcheck:
	$(MAKE) BUILDDIR=build/memcheck OPT=-O1 \
		EXTRA_CFLAGS=-DMDHUNT_TEST_CLOCK build/memcheck/mdhunt
	tests/memcheck build/memcheck $(MEMCHECK_TESTS)
