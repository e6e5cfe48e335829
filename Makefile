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

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/mdhunt $(DESTDIR)$(MANDIR)/man1/mdhunt.1
	rm -rf $(DESTDIR)$(DOCDIR)

clean:
	rm -rf build
