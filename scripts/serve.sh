#!/usr/bin/env bash
# The one run command (README.md): set up if needed (no pip run when nothing changed, see
# setup.sh), then serve the API on the embedded default (SQLite + local artifacts under
# ${GIF_DATA_DIR:-./data} + in-process runner).
set -euo pipefail
cd "$(dirname "$0")/.."
GIF_SETUP_CHROMIUM=0 bash scripts/setup.sh
exec .venv/bin/gif-service serve "$@"
