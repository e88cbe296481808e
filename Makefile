# nocp: `make run` starts the proxy, `make test` runs the test suite. Both create .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: install run fake-upstream test lint bench bench-quick bench-overhead bench-fidelity bench-speed bench-history bench-retrieval bench-hardening bench-ablation bench-holdout bench-output bench-policy clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	# bfcl-eval only for its data files (BFCL v4 memory, multi-turn sets): without its
	# dependencies, which would pull torch and CUDA (several GB).
	$(BIN)/python -m pip install -q --no-deps 'bfcl-eval==2026.3.23'
	# ... except mpmath, which its math simulator needs (else 25 entries per BFCL set are skipped)
	$(BIN)/python -m pip install -q 'mpmath==1.3.0'
	touch $(STAMP)

install: $(STAMP)

run: install  ## start the proxy on 127.0.0.1:8080 (ARGS="--upstream http://127.0.0.1:9000/v1" etc.)
	$(BIN)/nocp serve $(ARGS)

fake-upstream: install  ## a fake OpenAI + Gemini provider on 127.0.0.1:9000, for demos
	$(BIN)/nocp fake-upstream $(ARGS)

test: install  ## the whole test suite (loopback only)
	$(BIN)/pytest -q

lint: install  ## ruff + mypy --strict
	$(BIN)/ruff check proxy compressors tests benchmarks
	$(BIN)/ruff format --check proxy compressors
	$(BIN)/mypy --strict proxy compressors

# The bench* targets refresh the committed results in benchmarks/results (and the README's headline
# block); `nocp bench` and `nocp bench NAME` on their own write to ./nocp-bench and leave the tree alone.
RESULTS   := benchmarks/results
PEER_VENV := build/litellm-venv

bench: install  ## every benchmark: nocp bench (scenarios, traces, cost, overhead vs LiteLLM), then the rest
	$(BIN)/nocp bench --out $(RESULTS) --update-readme README.md --peer-venv $(PEER_VENV)
	$(BIN)/nocp bench fidelity --out $(RESULTS)
	$(BIN)/nocp bench compress-speed
	$(BIN)/nocp bench history --out $(RESULTS)
	$(BIN)/nocp bench retrieval --out $(RESULTS)
	$(BIN)/nocp bench ablation --out $(RESULTS)
	$(BIN)/nocp bench holdout --out $(RESULTS)
	$(BIN)/nocp bench output --out $(RESULTS)

bench-quick: install  ## nocp bench on small sizes, a few traces, no peer (under a minute; run by CI; writes build/bench-quick)
	$(BIN)/nocp bench --quick --out build/bench-quick

bench-overhead: install  ## added latency / RSS of the proxy vs direct and vs LiteLLM, on loopback
	$(BIN)/nocp bench overhead --out $(RESULTS) --peer-venv $(PEER_VENV)

bench-fidelity: install  ## compression savings and hard-token recall on ../shared/eval-data
	$(BIN)/nocp bench fidelity --out $(RESULTS)

bench-speed: install  ## compression and token-counting speed (prints only)
	$(BIN)/nocp bench compress-speed

bench-history: install  ## history roll-up: fact retention, prefix stability (eval-data + bfcl-eval)
	$(BIN)/nocp bench history --out $(RESULTS)

bench-retrieval: install  ## reversible compression: omitted hard tokens recoverable, cost of retrieval rounds
	$(BIN)/nocp bench retrieval --out $(RESULTS)

bench-ablation: install  ## real agent traces: cost saved per feature (ablation rows) at 50/75/90% cached discounts
	$(BIN)/nocp bench ablation --out $(RESULTS)

bench-policy: install  ## learned compression policy vs fixed arms on the SWE-agent traces (simulated retrievals)
	$(BIN)/nocp bench policy --out $(RESULTS)

bench-hardening: install  ## small requests under 3 floods of 30 MB requests (p50, RSS); agent requests with Redis paused
	$(BIN)/nocp bench hardening --out $(RESULTS)

bench-holdout: install  ## holdout run on the real traces: both cohorts, the measured saving with its interval
	$(BIN)/nocp bench holdout --out $(RESULTS)

bench-output: install  ## structured answers in TOON: output tokens, exact decodes, the cost of 20% broken answers
	$(BIN)/nocp bench output --out $(RESULTS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
