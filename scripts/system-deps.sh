#!/usr/bin/env bash
# Install the Debian packages the tests and the demo need, when missing.
# As root it runs apt-get; otherwise it prints the exact command to run.
set -euo pipefail

# postfix and dovecot-*: the mail deploy tests run their own instances; prometheus: its promtool
# checks the example alert rules.
packages=(redis-server nginx pebble postgresql librrd-dev pkg-config openssl python3-venv ca-certificates gettext chromium rrdtool postfix dovecot-core dovecot-imapd dovecot-pop3d prometheus)
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
# pyenv/other Pythons bring their own venv module: do not insist on Debian's.
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
fi
read -r -a missing <<< "${missing[*]:-}"
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing Debian packages: ${missing[*]}" >&2
  echo "Run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the system services on install where it can; the tests and the
# demo start their own instances on free loopback ports and never use these.
