#!/usr/bin/env bash
# Install what mapbroker needs to build and test on Debian 12 (run as root).
# Idempotent and quiet when everything is already there.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libwebsockets-dev libjansson-dev libsqlite3-dev libssl-dev
      libcmocka-dev clang libclang-rt-14-dev sqlite3 openssl curl ca-certificates)
[[ "${1:-}" == "--test" ]] && pkgs+=(nodejs chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs may come from another repository with npm bundled: accept any working node + npm
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm >/dev/null
fi
