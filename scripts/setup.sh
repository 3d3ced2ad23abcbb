#!/usr/bin/env bash
# Create .venv in the repo root and install npcadapt (with test extras) into it.
# Idempotent: does nothing when the venv is up to date with pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the engine-client tests need (clients/): Godot 3 headless, mono's C#
# compiler, msgpack-c for the C++ client; and redis-server for the shared adapter store's
# tests (they start their own on a free loopback port). Installed only when running as root
# with apt and one is missing; elsewhere those tests skip naming the package.
system_packages=(godot3-server:godot3-server mono-mcs:mcs libmsgpack-cxx-dev:/usr/include/msgpack.hpp g++:g++ redis-server:redis-server)
missing=()
for entry in "${system_packages[@]}"; do
  package=${entry%%:*} probe=${entry#*:}
  if [[ $probe == /* ]]; then [ -e "$probe" ] || missing+=("$package"); else command -v "$probe" >/dev/null 2>&1 || missing+=("$package"); fi
done
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian packages ${missing[*]}" >&2
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/tmp/npcadapt-apt.log 2>&1; then
    echo "setup: apt-get could not install ${missing[*]} (see /tmp/npcadapt-apt.log); their tests will skip" >&2
  fi
fi
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $python" >&2
  "$python" -m venv .venv
fi
stamp=.venv/.npcadapt-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: installing npcadapt into .venv (torch pinned by constraints.txt)" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
  touch "$stamp"
fi
