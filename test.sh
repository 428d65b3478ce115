#!/usr/bin/env bash
# The whole test suite, from a bare Debian machine with the Rust toolchain: installs what the
# tests need (GnuPG makes the keys and signatures the proxy must judge; the Debian packaging tools
# build and check the package), then runs the same checks CI runs: formatting, clippy with
# warnings as errors, and every test of the workspace. The Debian package test runs as root.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v gpg >/dev/null 2>&1 || missing+=(gnupg)
command -v gpgv >/dev/null 2>&1 || missing+=(gpgv)
# The Debian package test (tests/debian_package.rs): build, lint, install, run, purge.
dpkg -s build-essential >/dev/null 2>&1 || missing+=(build-essential)
command -v dpkg-buildpackage >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v dh >/dev/null 2>&1 || missing+=(debhelper)
command -v help2man >/dev/null 2>&1 || missing+=(help2man)
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
[ -x /usr/sbin/adduser ] || missing+=(adduser)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
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
