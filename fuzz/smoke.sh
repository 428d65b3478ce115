#!/usr/bin/env bash
# CI's fuzz smoke run: installs cargo-fuzz if missing, builds every target and runs each for
# FUZZ_SMOKE_SECONDS (default 20) from the committed seeds; fails on any crash, timeout or OOM.
# The long runs are fuzz/run.sh 600.
set -euo pipefail
exec "$(dirname "$0")/run.sh" "${FUZZ_SMOKE_SECONDS:-20}"
