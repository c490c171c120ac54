# Benchmark of the pipeline (scripts/bench.py, docs/bench.md). Options through ARGS, e.g.
#   make bench ARGS="--indexes both"               # without and with the indexes on the sources
#   make bench ARGS="--indexes both --postgres"    # the same on PostgreSQL at 127.0.0.1:5432
#   make bench ARGS="--sessions 24700000"          # ten times the sessions
# Timing of the report page on the demo data and on the benchmark's database (scripts/report_timing.py,
# docs/ui.md "Page timing"):
#   make report-timing                             # server time per request
#   make report-timing ARGS="--browser"            # and the load time in headless Chromium
.PHONY: bench report-timing

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)

report-timing: $(STAMP)
	$(PY) scripts/report_timing.py $(ARGS)
