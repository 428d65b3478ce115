#!/usr/bin/env bash
# CI's fuzz smoke run: installs cargo-fuzz if missing, builds every target and runs each for
# FUZZ_SMOKE_SECONDS (default 20) from the committed seeds; fails on any crash, timeout or OOM.
# Built without optimisation (FUZZ_PROFILE=--dev): the instrumented build of every dependency is
# most of the smoke run's cost. The long runs are fuzz/run.sh 600 (optimised).
set -euo pipefail
FUZZ_PROFILE="${FUZZ_PROFILE:---dev}" exec "$(dirname "$0")/run.sh" "${FUZZ_SMOKE_SECONDS:-20}"
