# tcap's entry points. Each target works on a fresh machine with only python3
# and pip: it creates .venv and installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test shells engines check lint types bench clean

## demo: KMeans in a spawn process pool, without and with tcap
demo: $(STAMP)
	@$(BIN)/python examples/demo.py

## test: the whole suite (real numpy/scipy/scikit-learn, real subprocesses)
test: $(STAMP) shells engines
	$(BIN)/python -m pytest

# zsh and fish for the shell-quoting tests, where apt can install them (as
# root, saying so first); the tests that need them skip otherwise.
shells:
	@if ! command -v zsh >/dev/null || ! command -v fish >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "note: installing system packages as root with apt-get: zsh fish (for the shell tests)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zsh fish) >/dev/null 2>&1 \
	      || echo "note: could not install zsh/fish; their tests will skip"; \
	  fi; \
	fi

# A real single-node Slurm cluster (slurmctld, slurmd, munge) and Open MPI for
# the cluster tests, where apt can install them (as root, saying so first); the tests start and
# stop the daemons themselves, and skip where the packages are missing.
engines:
	@if ! command -v mpirun >/dev/null || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "note: installing system packages as root with apt-get: slurm-wlm munge openmpi-bin (for the cluster tests)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge openmpi-bin) \
	      >/dev/null 2>&1 || echo "note: could not install Slurm/Open MPI; their tests will skip"; \
	  fi; \
	fi

## check: lint + types + tests
check: lint types test

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

types: $(STAMP)
	$(BIN)/mypy

## bench: launcher overhead and workload benchmarks, written to docs/benchmarks.md
bench: $(STAMP)
	$(BIN)/python -m compileall -q src
	$(BIN)/python benchmarks/run.py --output docs/benchmarks.md

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev,jupyter]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
