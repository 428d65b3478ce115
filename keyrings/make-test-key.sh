#!/usr/bin/env bash
# Regenerates the TEST-ONLY OpenPGP key that fake-store signs with, and the public keyring the
# tests and the demo give the proxy. Made with GnuPG in a throwaway home; no passphrase, no expiry.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
home="$(mktemp -d)"
trap 'gpgconf --homedir "$home" --kill all >/dev/null 2>&1 || true; rm -rf "$home"' EXIT
uid='Image Store TEST KEY (test use only, never trust) <test-only@image-store-proxy.invalid>'
gpg() { command gpg --homedir "$home" --batch --yes --pinentry-mode loopback --passphrase '' "$@"; }
gpg --quick-gen-key "$uid" ed25519 sign never
gpg --armor --export-secret-keys "$uid" >"$here/test-signing-key.asc"
gpg --export "$uid" >"$here/test-keyring.gpg"
gpg --armor --export "$uid" >"$here/test-keyring.asc"
gpg --list-keys --keyid-format long "$uid"
