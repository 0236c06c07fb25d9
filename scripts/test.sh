#!/usr/bin/env bash
# Run every check CI runs: lint, types, the unit, integration and chaos tests against real
# redis-server processes, a smoke run of the benchmarks, the plugin's Node tests, and the
# interop suite on the real OpenClaw gateway. Set ORCH_SKIP_INTEROP=1 to leave out the two
# Node parts.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

echo "== ruff"
.venv/bin/ruff check orchestrator tests benchmarks
.venv/bin/ruff format --check orchestrator tests benchmarks
echo "== mypy --strict"
.venv/bin/mypy
.venv/bin/mypy --strict benchmarks
echo "== pytest"
.venv/bin/pytest -m "not interop"
echo "== benchmark smoke run (seconds; keeps the harness working, judges no target)"
.venv/bin/python -m benchmarks --smoke

if [ "${ORCH_SKIP_INTEROP:-0}" = "1" ]; then
  echo "== interop suite skipped (ORCH_SKIP_INTEROP=1)"
  exit 0
fi
echo "== plugin tests (node:test)"
deploy/openclaw-plugin/test.sh
echo "== interop suite (real OpenClaw gateway)"
.venv/bin/pytest -m interop tests/interop
