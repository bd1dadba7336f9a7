# focusd: one plain Makefile for the engine, the daemon, the client and their tests.
#
#   make                 build everything under build/
#   make programs        build focusd, focus-run and focus alone
#   make demo            install what is missing, build the programs, run them on the fixture
#   make test            install what is missing, build and run every test; ends with
#                        "N passed, N failed"
#   make deps            install the Debian packages the build and tests need (idempotent)
#   make SANITIZE=address,undefined test
#                        the same with sanitizers, in build/san/
#
# Sources are found by directory, so a new file needs no edit here. CUDA objects are built
# by nvcc from kernels/cuda/*.cu whenever nvcc is found.

VERSION = 0.1.0
# Set before any `override CFLAGS +=` below: once CFLAGS has a value, `?=` gives it none.
OPT ?= -O2
CFLAGS ?= $(OPT) -g
CC ?= cc
NVCC ?= $(shell command -v nvcc 2>/dev/null)
PKG_CONFIG ?= pkg-config

ifneq ($(SANITIZE),)
BUILD ?= build/san
SAN_FLAGS = -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
else
BUILD ?= build
SAN_FLAGS =
endif

# Libraries, by part of the tree: each part names its pkg-config packages (*_PKGS) and the
# libraries that come without a .pc file (*_LIBS, as -l flags or options). A program links the
# parts it is built from and nothing else, so that its run-time dependencies are what it uses
# whatever the linker's defaults (Debian's gcc passes --as-needed, a sanitizer build does not).
PROTO_PKGS = msgpack libutf8proc libmd
CLIENT_PKGS = libzmq jansson
CLIENT_LIBS = -lm
ENGINE_PKGS = jansson libutf8proc libpcre2-8 libpng
# oneDNN (the CPU's matrix products) has no .pc file; it runs on libgomp, whose thread count
# the backend sets per thread.
ENGINE_LIBS = -ldnnl -lgomp -lm -pthread
DAEMON_PKGS = libzmq msgpack libsystemd sqlite3 libpq
DAEMON_LIBS = -pthread
# The benchmarks time OpenBLAS's sgemm beside the engine's products.
BENCH_PKGS = openblas

# Library code, one archive per layer: everything except the programs' main files. The client
# stands on common and protocol alone, focus-run on common and the engine (with the kernels).
COMMON_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard common/*.c))
PROTO_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard protocol/*.c))
ENGINE_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard kernels/*.c kernels/cpu/*.c engine/*.c))

CUDA_SRC := $(wildcard kernels/cuda/*.cu)
ifneq ($(NVCC),)
ifneq ($(CUDA_SRC),)
# Machine code for Ampere (sm_80, which also runs on sm_86), Ada (sm_89) and Hopper with its
# arch-specific instructions (sm_90a), plus compute_90 PTX that the driver compiles for newer
# cards. sm_90a code runs on sm_90 parts only, hence the plain compute_90 PTX beside it.
CUDA_ARCHS ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_89,code=sm_89 \
              -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
ENGINE_OBJ += $(CUDA_SRC:%.cu=$(BUILD)/%.o)
override CFLAGS += -DFOCUS_HAVE_CUDA
WITH_CUDA = yes
ENGINE_LIBS += -L$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
endif
endif

# pkg-config answers once, as make reads this file. So the goals that install packages first
# (demo, test, ...) run `make deps` and then build in a second make, which reads the flags of
# what deps installed; any other build without the packages stops before compiling, naming them.
ALL_PKGS := $(sort $(PROTO_PKGS) $(CLIENT_PKGS) $(ENGINE_PKGS) $(DAEMON_PKGS) $(BENCH_PKGS))
pkg_libs = $(shell $(PKG_CONFIG) --libs $(sort $(1)) 2>/dev/null)
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(ALL_PKGS) 2>/dev/null)
PKG_CHECK := $(if $(shell $(PKG_CONFIG) --exists $(ALL_PKGS) 2>/dev/null && echo y),,missing-packages)
CLIENT_LDLIBS := $(call pkg_libs,$(CLIENT_PKGS) $(PROTO_PKGS)) $(CLIENT_LIBS)
RUN_LDLIBS := $(call pkg_libs,$(ENGINE_PKGS)) $(ENGINE_LIBS)
DAEMON_LDLIBS := $(call pkg_libs,$(DAEMON_PKGS) $(ENGINE_PKGS) $(PROTO_PKGS)) $(DAEMON_LIBS) \
	$(ENGINE_LIBS)
# The tests and benchmarks reach into every part.
TEST_LDLIBS := $(call pkg_libs,$(ALL_PKGS)) $(CLIENT_LIBS) $(ENGINE_LIBS) $(DAEMON_LIBS)

override CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I. $(PKG_CFLAGS) $(SAN_FLAGS) \
	-DFOCUS_VERSION='"$(VERSION)"'
override LDFLAGS += $(SAN_FLAGS)

COMMON_LIB := $(BUILD)/libfocus-common.a
PROTO_LIB := $(BUILD)/libfocus-proto.a
ENGINE_LIB := $(BUILD)/libfocus-engine.a
LIBS := $(ENGINE_LIB) $(PROTO_LIB) $(COMMON_LIB)

DAEMON_SRC := $(wildcard daemon/*.c)
CLIENT_SRC := $(wildcard client/*.c)
PROGRAMS := $(BUILD)/focus-run $(if $(DAEMON_SRC),$(BUILD)/focusd) $(if $(CLIENT_SRC),$(BUILD)/focus)
TEST_SRC := $(wildcard tests/unit/test_*.c)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)

# GPU tests live apart from build/tests so that `make test` never runs them; each one skips with a
# clear message when no usable CUDA device exists. `make` builds them whenever CUDA is built.
GPU_TEST_BIN := $(patsubst tests/gpu/%.c,$(BUILD)/tests-gpu/%,$(wildcard tests/gpu/test_*.c))

BENCH_SRC := $(wildcard tests/bench/*.c)
BENCH_BIN := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/bench/%)
# Full-size SD3.5-medium shapes with random weights (about 16 GB), made once by a tool.
BENCH_MODEL ?= $(BUILD)/bench-model

.DEFAULT_GOAL := all
include install.mk

.PHONY: all programs test test-gpu test-integration deps demo clean missing-packages bench bench-gpu bench-serve bench-kernels bench-encode bench-step bench-focus bench-memory bench-model \
	bench-cpu-peers bench-shared
all: $(LIBS) $(PROGRAMS) $(TEST_BIN) $(BENCH_BIN) $(if $(WITH_CUDA),$(GPU_TEST_BIN))

programs: $(PROGRAMS)

$(BUILD)/%.o: %.c | $(PKG_CHECK)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) -O3 -I. $(CUDA_ARCHS) -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings \
		-MMD -MP -c $< -o $@

$(COMMON_LIB): $(COMMON_OBJ)
$(PROTO_LIB): $(PROTO_OBJ)
$(ENGINE_LIB): $(ENGINE_OBJ)
$(LIBS): | $(PKG_CHECK)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

missing-packages:
	@echo "pkg-config does not find the libraries the build needs; make deps installs them" >&2
	@$(PKG_CONFIG) --print-errors --exists $(ALL_PKGS)
	@exit 1

$(BUILD)/focus-run: $(patsubst %.c,$(BUILD)/%.o,$(wildcard engine/cli/*.c)) $(ENGINE_LIB) \
		$(COMMON_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(RUN_LDLIBS)

$(BUILD)/focusd: $(DAEMON_SRC:%.c=$(BUILD)/%.o) $(ENGINE_LIB) $(PROTO_LIB) $(COMMON_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(DAEMON_LDLIBS)

$(BUILD)/focus: $(CLIENT_SRC:%.c=$(BUILD)/%.o) $(PROTO_LIB) $(COMMON_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(CLIENT_LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LDLIBS)

$(BUILD)/bench/%: $(BUILD)/tests/bench/%.o $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LDLIBS)

$(BENCH_MODEL)/model_index.json:
	$(BUILD)/pyenv/bin/python tools/make_bench_model.py $(BENCH_MODEL)

# The goals from here to deps install what is missing first, then build in a second make (see
# pkg-config above).
bench-model: deps
	$(MAKE) $(BENCH_MODEL)/model_index.json

bench-kernels: $(BUILD)/bench/bench_kernels
	$(BUILD)/bench/bench_kernels

bench-encode: bench-model
	$(MAKE) $(BUILD)/bench/bench_encode
	$(BUILD)/bench/bench_encode $(BENCH_MODEL)

bench-step: bench-model
	$(MAKE) $(BUILD)/bench/bench_step
	$(BUILD)/bench/bench_step $(BENCH_MODEL)

# A FOCUS-controlled step against a plain one at 512x512 (BENCH_FOCUS_ARGS: bench_focus's
# REPEATS and options, e.g. "1 --sizes 512,1024").
bench-focus: bench-model
	$(MAKE) $(BUILD)/bench/bench_focus
	$(BUILD)/bench/bench_focus $(BENCH_MODEL) $(BENCH_FOCUS_ARGS)

bench-memory: bench-model
	$(MAKE) $(BUILD)/bench/bench_memory
	$(BUILD)/bench/bench_memory $(BENCH_MODEL) 512 1024

bench: bench-kernels bench-encode bench-step bench-focus bench-memory

# This engine against diffusers (installed from PyPI into $(BUILD)/peers-venv on first use) on
# the same cores: BENCH_PEERS_ARGS takes tools/bench_cpu_peers.py's options (--repeats N,
# --sizes, --precisions, --parts, --sides, --mem-limit GB).
bench-cpu-peers: $(BUILD)/bench/bench_step $(BUILD)/bench/bench_encode $(BUILD)/bench/bench_kernels \
		bench-model
	BUILD=$(BUILD) BENCH_MODEL=$(BENCH_MODEL) tools/bench-cpu-peers.sh run $(BENCH_PEERS_ARGS)

bench-gpu: $(BUILD)/bench/bench_gpu
	BUILD=$(BUILD) BENCH_MODEL=$(BENCH_MODEL) tools/bench-gpu.sh

bench-serve: deps
	$(MAKE) $(BUILD)/focusd
	BUILD=$(BUILD) build/pyenv/bin/python tests/bench/bench_serve.py

# Daemons sharing one PostgreSQL queue against one on SQLite (tests/bench/bench_shared.py).
bench-shared: deps
	$(MAKE) $(BUILD)/focusd
	BUILD=$(BUILD) build/pyenv/bin/python tests/bench/bench_shared.py $(BENCH_SHARED_ARGS)

test-integration: deps
	$(MAKE) all
	BUILD=$(BUILD) build/pyenv/bin/python -m pytest -q -p no:cacheprovider tests/integration

$(BUILD)/tests-gpu/%: $(BUILD)/tests/gpu/%.o $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LDLIBS)

test-gpu: $(GPU_TEST_BIN)
	tests/gpu/run.sh $(BUILD)

test: deps
	$(MAKE) all
	BUILD=$(BUILD) tests/run

demo: deps
	$(MAKE) programs
	BUILD=$(BUILD) tools/demo.sh

deps:
	tools/deps.sh

clean:
	rm -rf build

# Objects are kept: they are intermediate in the pattern chains above, but rebuilding them on
# every run would make each `make test` a full build.
.SECONDARY:

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
