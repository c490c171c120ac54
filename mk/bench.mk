# Benchmark of the pipeline (scripts/bench.py, docs/bench.md). Options through ARGS, e.g.
#   make bench ARGS="--latency-ms 100 --max-concurrency 8 --max-sessions 200"
#   make bench ARGS="--ratio-check --repeat 3"
.PHONY: bench

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)
