# Reliability and security: the long runs (docs/RELIABILITY.md). Quick versions run in `make test`;
# the long ones (tests/system/reliability/long, marker `long`) only here.

EXTRAS += reliability

# Overload: offered load as a multiple of measured capacity, and for how long (seconds).
OVERLOAD_FACTOR ?= 10
OVERLOAD_S      ?= 60
# Soak: duration (seconds) and the allowed resident-memory growth (percent).
SOAK_S          ?= 600
SOAK_RSS_PCT    ?= 5
# Full fuzz: Hypothesis examples per seed format.
FUZZ_EXAMPLES   ?= 2000
RELIABILITY_ARGS ?=

.PHONY: reliability
reliability: venv ## Long runs: 10x overload for a minute, ten-minute soak, full fuzz (figures in reports/reliability/)
	OVERLOAD_FACTOR=$(OVERLOAD_FACTOR) OVERLOAD_S=$(OVERLOAD_S) \
	  SOAK_S=$(SOAK_S) SOAK_RSS_PCT=$(SOAK_RSS_PCT) FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
	  $(BIN)/pytest -s -o timeout=0 -m long $(RELIABILITY_ARGS) tests/system/reliability/long
