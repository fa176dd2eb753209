# cptools — build, test and install. `make help` lists the targets.
#
# Everything is found by wildcard: a new lib/<stage>/*.c, cmd/*.c or
# tests/unit/test_*.c is built without editing this file.

PREFIX   ?= /usr/local
DESTDIR  ?=
BUILD    ?= build
SANITIZE ?=

CC       ?= cc
CXX      ?= c++
VERSION  := $(shell sed -n 's/^\#define CP_VERSION_STRING "\(.*\)"/\1/p' include/cellpose/core.h)

# libtorch: only lib/net/torch_shim.cpp uses it, built as the backend
# $(BACKEND), a shared object that libcellpose dlopen()s the first time a
# network is needed (lib/net/backend.c). libcellpose and the commands do not
# link libtorch, so runs without a network (--version, --from-flows,
# cpmetrics, ...) do not pay its start-up (~0.4 s, 160 MB).
#
# TORCH=/path/to/libtorch builds the backend with another libtorch (laid out
# like the official archives: include/, lib/libtorch*.so), e.g. one with CUDA;
# the rpath lets it run without LD_LIBRARY_PATH. Default: Debian's (CPU only).
TORCH ?=
ifeq ($(strip $(TORCH)),)
TORCH_INC := -isystem /usr/include/torch/csrc/api/include
TORCH_LIBS := -ltorch -ltorch_cpu -lc10
else
TORCH_DIR := $(abspath $(TORCH))
ifneq ($(words $(wildcard $(TORCH_DIR)/lib/libtorch_cpu.so $(TORCH_DIR)/include/torch/csrc/api/include)),2)
$(error TORCH=$(TORCH): no lib/libtorch_cpu.so or include/torch/csrc/api/include there (expected the layout of the libtorch archives))
endif
TORCH_INC := -isystem $(TORCH_DIR)/include -isystem $(TORCH_DIR)/include/torch/csrc/api/include
TORCH_LIBS := -L$(TORCH_DIR)/lib -Wl,-rpath,$(TORCH_DIR)/lib
# A CUDA libtorch: libtorch_cuda with --no-as-needed, as the libtorch docs
# require, since nothing refers to its symbols (loading it registers CUDA).
ifneq ($(wildcard $(TORCH_DIR)/lib/libtorch_cuda.so),)
TORCH_LIBS += -Wl,--no-as-needed -ltorch_cuda -Wl,--as-needed
endif
ifneq ($(wildcard $(TORCH_DIR)/lib/libc10_cuda.so),)
TORCH_LIBS += -lc10_cuda
endif
TORCH_LIBS += -ltorch -ltorch_cpu -lc10
endif

WARN     := -Wall -Wextra -Werror
OPT      := -O2 -g
SAN_ON   := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SANFLAGS := $(if $(SANITIZE),$(SAN_ON))
# -ffp-contract=off: the Euler steps and blending reproduce Cellpose bit for bit
# only when the compiler does not fuse multiply-adds behind our back.
CFLAGS   += -std=c11 $(OPT) $(WARN) -fopenmp -fPIC -ffp-contract=off $(SANFLAGS) \
            -D_GNU_SOURCE -Iinclude -Ilib -Icmd
CXXFLAGS += -std=c++17 $(OPT) $(WARN) -fopenmp -fPIC -ffp-contract=off $(SANFLAGS) \
            -Iinclude -Ilib $(TORCH_INC) -Wno-unused-parameter
LDLIBS   := -ltiff -lpng -lz -lsnappy -lzstd -lblosc -lcjson -lgomp -lm -lpthread -ldl
# --as-needed: a command links only the libraries it uses.
LDFLAGS  += -fopenmp -Wl,--as-needed $(SANFLAGS)

LIB_C    := $(sort $(wildcard lib/*/*.c))
LIB_CXX  := $(sort $(wildcard lib/*/*.cpp))
LIB_OBJ  := $(LIB_C:%.c=$(BUILD)/%.o)
BACKEND_OBJ := $(LIB_CXX:%.cpp=$(BUILD)/%.o)
CMD_SRC  := $(sort $(wildcard cmd/*.c))
CMDS     := $(CMD_SRC:cmd/%.c=%)
CMD_BIN  := $(CMDS:%=$(BUILD)/bin/%)
COMMON_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(sort $(wildcard cmd/common/*.c)))
TEST_SRC := $(sort $(wildcard tests/unit/test_*.c))
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TEST_SUPPORT := $(patsubst %.c,$(BUILD)/%.o,$(filter-out $(TEST_SRC),$(sort $(wildcard tests/unit/*.c))))
HEADERS  := $(wildcard include/cellpose/*.h) $(wildcard lib/*/*.h) $(wildcard cmd/common/*.h) $(wildcard tests/unit/*.h)

STATIC   := $(BUILD)/libcellpose.a
SHARED   := $(BUILD)/libcellpose.so
# Installed as $(PREFIX)/lib/cellpose/; the build tree keeps the same
# bin/../lib/cellpose/ layout so its commands and tests find theirs (and the
# ASan build its sanitized one).
BACKEND  := $(BUILD)/lib/cellpose/libcellpose_torch.so
TORCH_FLAGS := $(BUILD)/lib/net/torch-flags

.PHONY: all lib backend cmds tests check check-normal check-asan asan demo bench deps install uninstall clean help

all: lib cmds

help:
	@echo "make            build libcellpose (.a, .so) and the commands into $(BUILD)/"
	@echo "make demo       install missing Debian packages, build, run cpseg on a bundled sample"
	@echo "make check      install missing packages, build, run every test (normal + sanitizers)"
	@echo "make backend    only the libtorch backend; TORCH=/path/to/libtorch for another libtorch (README: GPU)"
	@echo "make asan       build everything with AddressSanitizer + UBSan into build-asan/"
	@echo "make bench      speed and memory figures (not a test)"
	@echo "make install    PREFIX=$(PREFIX) DESTDIR=$(DESTDIR)"

lib: $(STATIC) $(SHARED) $(BACKEND)
backend: $(BACKEND)
cmds: $(CMD_BIN) $(BACKEND)
tests: $(TEST_BIN) $(CMD_BIN) $(BACKEND)

$(BUILD)/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cpp $(HEADERS) $(TORCH_FLAGS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(STATIC): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(SHARED): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libcellpose.so.0 $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The built-in model and its size model are assembled into builtin.o (.incbin).
$(BUILD)/lib/net/builtin.o: lib/net/models/cptools_nuclei.pth lib/net/models/cptools_nuclei.pth_size.npy

# The last place the loader looks for the backend (after CELLPOSE_TORCH_BACKEND
# and the folders next to libcellpose and the program): PREFIX at build time.
$(BUILD)/lib/net/backend.o: CFLAGS += -DCP_TORCH_BACKEND_DIR='"$(PREFIX)/lib/cellpose"'

# The libtorch flags in use: rewritten only when they change (another TORCH),
# so that the backend is rebuilt then and only then.
FORCE:
$(TORCH_FLAGS): FORCE
	@mkdir -p $(dir $@)
	@printf '%s\n' '$(TORCH_INC) $(TORCH_LIBS)' | cmp -s - $@ || printf '%s\n' '$(TORCH_INC) $(TORCH_LIBS)' > $@

# --no-undefined: the backend gets libcellpose's functions from the loader
# (cp_torch_host), never by linking, so it serves .a and .so users alike.
$(BACKEND): $(BACKEND_OBJ) $(TORCH_FLAGS)
	@mkdir -p $(dir $@)
	$(CXX) -shared $(LDFLAGS) -Wl,--no-undefined -o $@ $(BACKEND_OBJ) $(TORCH_LIBS) -lgomp -lstdc++ -lm -lpthread

$(BUILD)/bin/%: $(BUILD)/cmd/%.o $(COMMON_OBJ) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(COMMON_OBJ) $(STATIC) $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(TEST_SUPPORT) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(TEST_SUPPORT) $(STATIC) $(LDLIBS)

include tests/fuzz/fuzz.mk

deps:
	@scripts/install-deps

# The sanitizer build lives in its own tree so both can coexist.
asan:
	$(MAKE) BUILD=build-asan SANITIZE=1 tests

check-normal: tests
	tests/run --build $(BUILD)

check-asan: asan
	tests/run --build build-asan --sanitizers

check: deps
	$(MAKE) check-normal
	$(MAKE) check-asan
	tests/run --summary $(BUILD) build-asan

demo: deps
	$(MAKE) all
	scripts/demo $(BUILD)

bench:
	@scripts/install-deps bench
	$(MAKE) all
	scripts/bench $(BUILD)

# Regenerated on every install: it records PREFIX.
.PHONY: $(BUILD)/cellpose.pc
$(BUILD)/cellpose.pc:
	@mkdir -p $(dir $@)
	printf 'prefix=%s\nlibdir=$${prefix}/lib\nincludedir=$${prefix}/include\n\nName: cellpose\nDescription: Cellpose segmentation, measurement and spot tables in C\nVersion: %s\nLibs: -L$${libdir} -lcellpose\nLibs.private: %s\nCflags: -I$${includedir}\n' \
	  '$(PREFIX)' '$(VERSION)' '$(LDLIBS)' > $@

install: all $(BUILD)/cellpose.pc
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/lib/cellpose \
	  $(DESTDIR)$(PREFIX)/include/cellpose $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 755 $(CMD_BIN) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(STATIC) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BACKEND) $(DESTDIR)$(PREFIX)/lib/cellpose/
	install -m 755 $(SHARED) $(DESTDIR)$(PREFIX)/lib/libcellpose.so.$(VERSION)
	ln -sf libcellpose.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libcellpose.so.0
	ln -sf libcellpose.so.0 $(DESTDIR)$(PREFIX)/lib/libcellpose.so
	install -m 644 include/cellpose/*.h $(DESTDIR)$(PREFIX)/include/cellpose/
	install -m 644 $(BUILD)/cellpose.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/
	install -m 644 $(wildcard man/*.1) $(DESTDIR)$(PREFIX)/share/man/man1/

uninstall:
	rm -f $(CMDS:%=$(DESTDIR)$(PREFIX)/bin/%) $(DESTDIR)$(PREFIX)/lib/libcellpose.* \
	  $(DESTDIR)$(PREFIX)/lib/cellpose/$(notdir $(BACKEND)) \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig/cellpose.pc
	rm -rf $(DESTDIR)$(PREFIX)/include/cellpose
	rm -f $(patsubst man/%,$(DESTDIR)$(PREFIX)/share/man/man1/%,$(wildcard man/*.1))

clean:
	rm -rf build build-asan build-fuzz
