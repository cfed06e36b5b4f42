#!/usr/bin/env bash
# Validates deploy/systemd/vkv@.service offline, without a running systemd (a container has none):
#   - `systemd-analyze verify` of the instance vkv@main.service in a throwaway root holding the
#     unit, the example env file as /etc/vkv/main.env, the system's own units (the targets it
#     orders after) and a placeholder /usr/local/bin/vkv-server (verify checks that it exists);
#     any message, even a warning such as an unknown key, fails the check;
#   - `systemd-analyze security --offline=true`: the exposure score must stay at or below 2.0
#     ("OK"), so a hardening line dropped by mistake shows.
# Needs systemd-analyze (Debian package systemd).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "systemd-check: systemd-analyze is not installed (apt-get install systemd)" >&2; exit 2; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/vkv" "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
printf '#!/bin/sh\nexit 0\n' >"$root/usr/local/bin/vkv-server"
chmod 755 "$root/usr/local/bin/vkv-server"
cp deploy/systemd/vkv@.service "$root/etc/systemd/system/"
cp deploy/systemd/vkv.env.example "$root/etc/vkv/main.env"

messages=$(systemd-analyze verify --root="$root" vkv@main.service 2>&1) || { echo "$messages" >&2; echo "systemd-check: verify failed" >&2; exit 1; }
if [ -n "$messages" ]; then
  echo "$messages" >&2
  echo "systemd-check: systemd-analyze verify printed the messages above" >&2
  exit 1
fi
echo "systemd-check: systemd-analyze verify: no messages"
if ! report=$(systemd-analyze security --offline=true --threshold=20 --root="$root" vkv@main.service 2>&1); then
  echo "$report" >&2
  echo "systemd-check: exposure above 2.0" >&2
  exit 1
fi
echo "systemd-check: $(grep 'Overall exposure' <<<"$report")"
