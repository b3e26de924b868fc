# shellcheck shell=bash
# Sourced by scripts/jectguard and scripts/test: find a Python >= 3.12, make
# .venv beside the project, install jectguard (editable) with its test tools.
# Re-installs only when pyproject.toml changes.
set -euo pipefail

JG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JG_VENV="${JG_VENV:-$JG_ROOT/.venv}"

jg_python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

jg_find_python() {
    local candidates=()
    [ -n "${JG_PYTHON:-}" ] && candidates+=("$JG_PYTHON")
    candidates+=(python3.13 python3.12 python3)
    local root="${PYENV_ROOT:-$HOME/.pyenv}"
    local p
    for p in "$root"/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
        [ -x "$p" ] && candidates+=("$p")
    done
    for p in "${candidates[@]}"; do
        if command -v "$p" >/dev/null 2>&1 && jg_python_ok "$p"; then
            command -v "$p"
            return 0
        fi
    done
    return 1
}

jg_bootstrap() {
    if [ ! -x "$JG_VENV/bin/python" ] || ! jg_python_ok "$JG_VENV/bin/python"; then
        local py
        if ! py="$(jg_find_python)"; then
            cat >&2 <<'MSG'
jectguard needs Python 3.12 or newer (mitmproxy 12 requires it), and none was found.
Looked for: $JG_PYTHON, python3.13, python3.12, python3 on PATH, and pyenv versions 3.12+.
Install one (for example `pyenv install 3.12`, or your distribution's python3.12 and
python3.12-venv packages), or point JG_PYTHON at its interpreter, then run this again.
MSG
            exit 3
        fi
        echo "jectguard: creating $JG_VENV with $py ($("$py" -V 2>&1))" >&2
        rm -rf "$JG_VENV"
        if ! "$py" -m venv "$JG_VENV"; then
            echo "jectguard: '$py -m venv' failed; install the venv module for that Python (e.g. python3.12-venv)" >&2
            exit 3
        fi
    fi
    local stamp="$JG_VENV/.jectguard-installed"
    local want
    want="$(cat "$JG_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "jectguard: installing dependencies into $JG_VENV" >&2
        "$JG_VENV/bin/python" -m pip install -q --disable-pip-version-check -U 'pip>=25.1'
        "$JG_VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$JG_ROOT" --group "$JG_ROOT/pyproject.toml:test" --group "$JG_ROOT/pyproject.toml:lint"
        echo "$want" >"$stamp"
    fi
    export PATH="$JG_VENV/bin:$PATH"
}

# System programs the test suite drives for real: a browser (Chromium) for the
# end-to-end browser tests, HAProxy for the scale-out test, curl as a client,
# docker-compose to validate the compose file.
# Installed from Debian's packages when missing and we are root (as in CI).
# An entry is PROGRAM:PACKAGE, or just PACKAGE for one that installs no program.
# docker-compose (v1, from Debian) validates docker-compose.yml; there is no Docker engine.
# postgresql: the shared ledger's tests run a real server (its programs are off PATH).
JG_TEST_PROGRAMS=("chromium:chromium" "fonts-liberation" "haproxy:haproxy" "curl:curl"
                  "docker-compose:docker-compose" "postgresql")

jg_system_packages() {
    local missing=() item prog pkg
    for item in "${JG_TEST_PROGRAMS[@]}"; do
        prog="${item%%:*}"; pkg="${item#*:}"
        if [ "$prog" = "$item" ]; then
            dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
        else
            command -v "$prog" >/dev/null 2>&1 || missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "jectguard: missing ${missing[*]} (Debian packages); the tests that need them will be skipped." >&2
        echo "jectguard: install them with: sudo apt-get install ${missing[*]}" >&2
        return 0
    fi
    echo "jectguard: installing ${missing[*]} from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
