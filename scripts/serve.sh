#!/usr/bin/env bash
# Run the daemon on the embedded default: a managed redis-server in the state directory
# (ORCH_STATE_DIR, default ~/.local/state/openclaw-orchestrator). Arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/orchestrator serve "$@"
