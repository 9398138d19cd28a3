#!/usr/bin/env bash
# The one test command (README.md): set up from scratch if needed, start PostgreSQL and Redis,
# lint, then run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! bash scripts/services.sh; then
  if [ "${CI:-}" = true ]; then echo "test: PostgreSQL/Redis are required in CI" >&2; exit 1; fi
  echo "test: PostgreSQL/Redis unavailable: the tests that need them will skip" >&2
fi
.venv/bin/ruff check gif service worker tests bench experiments
.venv/bin/python -m pytest "$@"
