# Posthaste — build, run and test.
#
#   make            build ./posthaste (installs missing Debian packages first)
#   make run        build and start `posthaste serve` on embedded defaults
#   make test       unit tests (cmocka) + integration tests (pytest)
#   make test-asan  the same, built with AddressSanitizer + UBSan
#
# Every source file under src/ is compiled; a subsystem adds files, not rules.

PKGS     := libevent libevent_openssl libevent_pthreads openssl sqlite3 jansson \
            inih libcares gmime-3.0 opendkim libidn2 libcurl
CC       ?= gcc
PYTHON   ?= /usr/bin/python3
BUILD    ?= build
WARN     := -Wall -Wextra -Wshadow -Wformat=2 -Wno-unused-parameter
CSTD     := -std=c17 -D_GNU_SOURCE
OPT      ?= -O2 -g
SAN      ?=
# What pytest runs; narrow it with e.g. PYTEST_ARGS=tests/integration/test_cli.py
PYTEST_ARGS ?= tests/integration

DEPS_OK  := $(shell pkg-config --exists $(PKGS) 2>/dev/null && echo yes)
ifeq ($(DEPS_OK),yes)
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   := $(shell pkg-config --libs $(PKGS)) -lmagic -lpthread -lm
endif

CFLAGS   += $(CSTD) $(OPT) $(WARN) $(SAN) -Isrc $(PKG_CFLAGS) -MMD -MP
LDFLAGS  += $(SAN)
LDLIBS   += $(PKG_LIBS)

SRC      := $(shell find src -name '*.c' | sort)
LIB_SRC  := $(filter-out src/main.c,$(SRC))
OBJ      := $(SRC:%.c=$(BUILD)/%.o)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
HELP_SRC := $(wildcard tests/helpers/*.c)
HELP_BIN := $(HELP_SRC:tests/helpers/%.c=$(BUILD)/helpers/%)

.PHONY: all deps run test test-unit test-integration test-asan test-reliability test-valgrind fuzz fuzz-bins clean lint format

all: deps posthaste

# scripts/deps is idempotent and quick when everything is present.
deps:
	@scripts/deps

# Replace by rename: a running ./posthaste keeps its old inode ("text file busy" otherwise).
posthaste: $(BUILD)/posthaste
	@cp $< $@.tmp && mv -f $@.tmp $@

$(BUILD)/posthaste: $(OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/helpers/%: tests/helpers/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

run: all
	@mkdir -p var
	@echo "Posthaste starting on embedded defaults (spool ./var/spool.db, loopback listeners)."
	@echo "In another terminal:"
	@echo "  ./posthaste keys create --name first --scope send --scope read   # prints your key once"
	@echo "  then send a first message as shown in README.md, 'Sending mail'."
	@echo "Stop with Ctrl-C (graceful)."
	exec ./posthaste serve $(if $(wildcard posthaste.conf),-c posthaste.conf,)

test: deps
	@$(MAKE) --no-print-directory posthaste $(UNIT_BIN) $(HELP_BIN)
	@$(MAKE) --no-print-directory test-unit test-integration

test-unit: $(UNIT_BIN)
	@scripts/run-unit $(UNIT_BIN)

# POSTHASTE_BIN and POSTHASTE_HELPERS tell the pytest harness which build to drive.
test-integration: posthaste $(HELP_BIN)
	POSTHASTE_BIN=$(CURDIR)/$(BUILD)/posthaste POSTHASTE_HELPERS=$(CURDIR)/$(BUILD)/helpers \
	  $(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Sanitizer build lives in its own tree so it never mixes objects with the normal one.
test-asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  ASAN_OPTIONS=detect_leaks=1 test-unit-asan

test-unit-asan: $(UNIT_BIN) $(BUILD)/posthaste $(HELP_BIN)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  scripts/run-unit $(UNIT_BIN)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  POSTHASTE_BIN=$(CURDIR)/$(BUILD)/posthaste POSTHASTE_HELPERS=$(CURDIR)/$(BUILD)/helpers \
	  POSTHASTE_ASAN=1 $(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Full reliability profile (tests/reliability/: kill loop, faults, disk full, exhaustion,
# bad TLS; docs/RELIABILITY.md). A short profile of each runs in test-integration.
test-reliability: posthaste $(HELP_BIN)
	POSTHASTE_BIN=$(CURDIR)/$(BUILD)/posthaste POSTHASTE_HELPERS=$(CURDIR)/$(BUILD)/helpers \
	  $(PYTHON) -m pytest -q -s -p no:cacheprovider tests/reliability

# 1,000 messages through `posthaste serve` under valgrind: no definite or indirect leak.
test-valgrind: posthaste $(HELP_BIN)
	POSTHASTE_BIN=$(CURDIR)/$(BUILD)/posthaste POSTHASTE_HELPERS=$(CURDIR)/$(BUILD)/helpers \
	  $(PYTHON) -m pytest -q -s -p no:cacheprovider tests/reliability/test_leaks.py

# libFuzzer targets (clang), ASan+UBSan, each run FUZZ_SECONDS on its seed corpus.
FUZZ_SECONDS ?= 60
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)

fuzz: deps
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang WARN=-w OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined" fuzz-bins
	@scripts/run-fuzz $(FUZZ_SECONDS) build-fuzz

fuzz-bins: $(FUZZ_BIN)

$(BUILD)/fuzz/%: tests/fuzz/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

# sys/queue.h is force-included: cppcheck skips system headers, and its list
# macros would otherwise read as syntax errors. Exit status 1 on any finding.
QUEUE_H := $(firstword $(wildcard /usr/include/*/sys/queue.h /usr/include/sys/queue.h))
lint:
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability --std=c11 \
	  --suppress=missingIncludeSystem --inline-suppr $(if $(QUEUE_H),--include=$(QUEUE_H)) -Isrc src

format:
	clang-format -i $(SRC) $(shell find src -name '*.h')

clean:
	rm -rf build build-asan build-fuzz posthaste

-include $(OBJ:.o=.d) $(UNIT_BIN:%=%.d)
