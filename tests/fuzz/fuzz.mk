# Fuzz targets (included by the Makefile). Each tests/fuzz/fuzz_<name>.c is
# built twice: with replay.c into $(BUILD)/fuzz/replay_<name>, which
# `make check` runs over the saved inputs (normal and sanitizer trees), and
# with clang's libFuzzer into build-fuzz/ for `make fuzz`.

FUZZ_SRC     := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_NAMES   := $(FUZZ_SRC:tests/fuzz/fuzz_%.c=%)
FUZZ_SUPPORT := $(BUILD)/tests/fuzz/support.o
FUZZ_REPLAY  := $(FUZZ_NAMES:%=$(BUILD)/fuzz/replay_%)
FUZZ_SECONDS ?= 60
# per input: 1 s, and no allocation a hostile header could inflate past 1 GiB
FUZZ_FLAGS   ?= -timeout=1 -rss_limit_mb=2048 -malloc_limit_mb=1024

tests: $(FUZZ_REPLAY)

$(BUILD)/fuzz/replay_%: $(BUILD)/tests/fuzz/fuzz_%.o $(BUILD)/tests/fuzz/replay.o $(FUZZ_SUPPORT) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# libFuzzer needs clang for the whole library (coverage), so its own tree.
FUZZ_BUILD := build-fuzz
FUZZ_CFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer

.PHONY: fuzz fuzz-build
fuzz-build:
	@scripts/install-deps fuzz
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=clang CXX=clang++ OPT='-O1 -g' \
	  SAN_ON='$(FUZZ_CFLAGS)' SANITIZE=1 $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz/fuzz_%)

$(BUILD)/fuzz/fuzz_%: $(BUILD)/tests/fuzz/fuzz_%.o $(FUZZ_SUPPORT) $(STATIC)
	@mkdir -p $(dir $@)
	$(CXX) -fsanitize=fuzzer,address,undefined -fopenmp -o $@ $^ $(LDLIBS)

fuzz: fuzz-build
	tests/fuzz/run-fuzz $(FUZZ_BUILD) $(FUZZ_SECONDS) '$(FUZZ_FLAGS)' $(FUZZ_NAMES)
