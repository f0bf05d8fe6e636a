#!/usr/bin/env bash
# The whole test suite: unit tests, then integration tests against a real Kafka
# broker and Redis. Creates .venv when missing, starts the services when they are
# not running (and stops them again), and passes its arguments on to pytest:
#
#   scripts/test.sh                 everything
#   scripts/test.sh tests/unit      the unit tests only (no services needed)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,peers]'

started=0
stop_services() { if ((started)); then scripts/services.sh stop; fi; }
trap stop_services EXIT
if ! scripts/services.sh status >/dev/null 2>&1; then
    scripts/services.sh start
    started=1
fi
eval "$(scripts/services.sh env)"

# the model's numba kernels into their disk cache first (about 30 s once), so
# that no test's worker spends its first batch compiling them
.venv/bin/python -m models.warmup
.venv/bin/python -m pytest -q "${@:-tests}"
