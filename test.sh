#!/usr/bin/env bash
# The whole test suite, from a bare Debian machine with the Rust toolchain: installs what the
# tests need (GnuPG makes the keys and signatures the proxy must judge; headless Chromium and
# chromedriver drive the Store page), then runs the same checks CI runs: formatting, clippy with
# warnings as errors, and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v gpg >/dev/null 2>&1 || missing+=(gnupg)
command -v gpgv >/dev/null 2>&1 || missing+=(gpgv)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if ((${#missing[@]})); then
    echo "test.sh: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
