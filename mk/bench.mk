# Benchmark of the pipeline (scripts/bench.py, docs/bench.md). Options through ARGS, e.g.
#   make bench ARGS="--indexes both"               # without and with the indexes on the sources
#   make bench ARGS="--indexes both --postgres"    # the same on PostgreSQL at 127.0.0.1:5432
#   make bench ARGS="--sessions 24700000"          # ten times the sessions
.PHONY: bench

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)
