#!/usr/bin/env bash
# Installs the system tools that test/deploy.test.ts runs against the files in
# deploy/: promtool (Debian's `prometheus` package) for the alert rules and their
# unit tests, systemd-analyze (`systemd`) for the unit, and python3-yaml to parse
# the Kubernetes manifests. Idempotent: installs only what is missing, and does
# nothing (not even apt-get update) when everything is already there.
#
# Called from .ci/run before `npm test`. Needs root (or sudo) and Debian's mirror.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# The test parses YAML with Debian's interpreter, not whatever python3 is first on PATH.
/usr/bin/python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup-system-deps: promtool, systemd-analyze and python3-yaml are present"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-system-deps: missing ${missing[*]} and apt-get is not available; install them by hand" >&2
  exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    echo "setup-system-deps: missing ${missing[*]}; run as root (or install sudo)" >&2
    exit 1
  fi
fi

echo "setup-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Only the promtool binary is wanted: forbid the packages' maintainer scripts to
# start services (the prometheus server) for the length of the install, unless
# the machine already has a policy of its own.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  trap '"${SUDO[@]}" rm -f "$policy"' EXIT
fi
"${SUDO[@]}" apt-get update -qq
# No recommends: the prometheus package would otherwise pull in node-exporter.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

for tool in promtool systemd-analyze; do
  command -v "$tool" >/dev/null 2>&1 || { echo "setup-system-deps: $tool still missing after install" >&2; exit 1; }
done
/usr/bin/python3 -c 'import yaml' || { echo "setup-system-deps: python3-yaml still missing after install" >&2; exit 1; }
echo "setup-system-deps: done"
