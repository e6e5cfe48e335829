#!/bin/sh
# Install the Debian 12 packages that mdhunt's build, tests, demo and
# benchmark need.  Safe to run again: packages already present are skipped,
# and apt-get runs only when something is missing.
set -eu

PACKAGES="
build-essential pkg-config ca-certificates openssl
libcurl4-openssl-dev libjansson-dev libssl-dev libinih-dev libcmocka-dev
libsqlite3-dev libyaml-dev sqlite3
python3 python3-cryptography python3-jwt python3-aiosmtpd python3-msal
clang libclang-rt-14-dev valgrind cppcheck clang-tidy
curl jq python3-requests
"

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null |
            grep -q 'install ok installed'; then
        missing="$missing $pkg"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    else
        echo "install-deps: missing packages:$missing" >&2
        echo "install-deps: run this script as root or install sudo" >&2
        exit 1
    fi
fi

echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
