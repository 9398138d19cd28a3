#!/usr/bin/env bash
# Set up everything gif-service needs on a fresh Debian machine: system packages (the
# Fashion-MNIST files, curl and jq for the README's examples, Chromium for the report test),
# a virtual environment in .venv with PyTorch pinned (pip takes it from the local disk where
# the machine carries it) and the project installed editable with its service and dev
# extras. Safe to run again, and fast then: the pip steps are skipped while a stamp in .venv
# still matches what they depend on (pyproject.toml, this script, the Python, the installed
# torch, where the editable install points). Delete .venv/.gif-setup-stamp to force them.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

need_apt=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
# The README's examples (and tests/test_readme.py, which runs them) use curl and jq.
for tool in curl jq; do command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool"); done
if [ "${GIF_SETUP_CHROMIUM:-1}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get install ${need_apt[*]}"
    # Wait for another apt run (a second checkout's setup, unattended upgrades) instead of
    # failing on its lock.
    apt_wait=(-o DPkg::Lock::Timeout=600)
    apt-get "${apt_wait[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: not root; install these Debian packages yourself: ${need_apt[*]}" >&2
  fi
fi

STAMP=.venv/.gif-setup-stamp
# One line that changes whenever the pip steps below would install something different.
setup_stamp() {
  {
    sha256sum pyproject.toml scripts/setup.sh
    pwd -P
    .venv/bin/python - <<'PY' 2>/dev/null || echo "no interpreter"
import importlib.metadata as metadata
import sys

print(sys.version)
for name in ("torch", "torchvision", "gif-service"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "absent")
try:  # where the editable install points (a shared .venv may point at another checkout)
    print(metadata.distribution("gif-service").read_text("direct_url.json"))
except metadata.PackageNotFoundError:
    pass
PY
  } | sha256sum | cut -d' ' -f1
}

if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(setup_stamp)" ]; then
  echo "setup: .venv is up to date (delete $STAMP to reinstall)"
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
rm -f "$STAMP"
.venv/bin/python -m pip install -q --upgrade pip
# Torch first and alone, pinned: a CUDA build of ~5.5 GB that pip finds on this disk.
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e '.[service,dev]'
setup_stamp > "$STAMP"
echo "setup: done ($(.venv/bin/python -c 'import importlib.metadata as m; print("torch", m.version("torch"))'))"
