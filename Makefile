# focusd: one plain Makefile for the engine, the daemon, the client and their tests.
#
#   make                 build everything under build/
#   make test            build and run every test; ends with "N passed, N failed"
#   make deps            install the Debian packages the build and tests need (idempotent)
#   make SANITIZE=address,undefined test
#                        the same with sanitizers, in build/san/
#
# Sources are found by directory, so a new file needs no edit here. CUDA objects are built
# by nvcc from kernels/cuda/*.cu whenever nvcc is found.

VERSION = 0.1.0
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

PKGS = jansson libutf8proc libpcre2-8 openblas libpng libzmq msgpack libsystemd sqlite3 libmd
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null)

OPT ?= -O2
CFLAGS ?= $(OPT) -g
override CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I. $(PKG_CFLAGS) $(SAN_FLAGS) \
	-DFOCUS_VERSION='"$(VERSION)"'
override LDFLAGS += $(SAN_FLAGS)
LDLIBS = $(PKG_LIBS) -ldnnl -lgomp -lm -lpthread

# Library code: everything except the programs' main files.
LIB_SRC := $(wildcard common/*.c kernels/*.c kernels/cpu/*.c engine/*.c protocol/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)

CUDA_SRC := $(wildcard kernels/cuda/*.cu)
ifneq ($(NVCC),)
ifneq ($(CUDA_SRC),)
# Machine code for Ampere (sm_80, which also runs on sm_86), Ada (sm_89) and Hopper with its
# arch-specific instructions (sm_90a), plus compute_90 PTX that the driver compiles for newer
# cards. sm_90a code runs on sm_90 parts only, hence the plain compute_90 PTX beside it.
CUDA_ARCHS ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_89,code=sm_89 \
              -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
LIB_OBJ += $(CUDA_SRC:%.cu=$(BUILD)/%.o)
override CFLAGS += -DFOCUS_HAVE_CUDA
WITH_CUDA = yes
LDLIBS += -L$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
endif
endif

LIB := $(BUILD)/libfocus.a

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

.PHONY: all test test-gpu test-integration deps demo clean bench bench-gpu bench-serve bench-kernels bench-encode bench-step bench-memory bench-model \
	bench-cpu-peers
all: $(LIB) $(PROGRAMS) $(TEST_BIN) $(BENCH_BIN) $(if $(WITH_CUDA),$(GPU_TEST_BIN))

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) -O3 -I. $(CUDA_ARCHS) -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings \
		-MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/focus-run: $(patsubst %.c,$(BUILD)/%.o,$(wildcard engine/cli/*.c)) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/focusd: $(DAEMON_SRC:%.c=$(BUILD)/%.o) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/focus: $(CLIENT_SRC:%.c=$(BUILD)/%.o) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/tests/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BENCH_MODEL)/model_index.json:
	$(BUILD)/pyenv/bin/python tools/make_bench_model.py $(BENCH_MODEL)

bench-model: deps $(BENCH_MODEL)/model_index.json

bench-kernels: $(BUILD)/bench/bench_kernels
	$(BUILD)/bench/bench_kernels

bench-encode: $(BUILD)/bench/bench_encode bench-model
	$(BUILD)/bench/bench_encode $(BENCH_MODEL)

bench-step: $(BUILD)/bench/bench_step bench-model
	$(BUILD)/bench/bench_step $(BENCH_MODEL)

bench-memory: $(BUILD)/bench/bench_memory bench-model
	$(BUILD)/bench/bench_memory $(BENCH_MODEL) 512 1024

bench: bench-kernels bench-encode bench-step bench-memory

# This engine against diffusers (installed from PyPI into $(BUILD)/peers-venv on first use) on
# the same cores: BENCH_PEERS_ARGS takes tools/bench_cpu_peers.py's options (--repeats N,
# --sizes, --precisions, --parts, --sides, --mem-limit GB).
bench-cpu-peers: $(BUILD)/bench/bench_step $(BUILD)/bench/bench_encode $(BUILD)/bench/bench_kernels \
		bench-model
	BUILD=$(BUILD) BENCH_MODEL=$(BENCH_MODEL) tools/bench-cpu-peers.sh run $(BENCH_PEERS_ARGS)

bench-gpu: $(BUILD)/bench/bench_gpu
	BUILD=$(BUILD) BENCH_MODEL=$(BENCH_MODEL) tools/bench-gpu.sh

bench-serve: deps $(BUILD)/focusd
	BUILD=$(BUILD) build/pyenv/bin/python tests/bench/bench_serve.py

test-integration: deps all
	BUILD=$(BUILD) build/pyenv/bin/python -m pytest -q -p no:cacheprovider tests/integration

$(BUILD)/tests-gpu/%: $(BUILD)/tests/gpu/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

test-gpu: $(GPU_TEST_BIN)
	tests/gpu/run.sh $(BUILD)

test: all
	BUILD=$(BUILD) tests/run

deps:
	tools/deps.sh

demo: deps all
	BUILD=$(BUILD) tools/demo.sh

clean:
	rm -rf build

# Objects are kept: they are intermediate in the pattern chains above, but rebuilding them on
# every run would make each `make test` a full build.
.SECONDARY:

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
