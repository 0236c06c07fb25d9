#!/usr/bin/env bash
# Run the plugin's unit tests with Node 24, installed from the npm registry by
# scripts/install-openclaw.sh into its cache directory (see that script for the location).
#
# Usage: deploy/openclaw-plugin/test.sh [--typecheck] [extra node --test arguments]
#
# --typecheck also installs openclaw@2026.9.6 (about 840 MB, once) and checks the TypeScript
# against its type definitions with the TypeScript compiler that ships inside that install.
set -euo pipefail

plugin_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$plugin_dir/../.." && pwd)"
installer="$repo_dir/scripts/install-openclaw.sh"

typecheck=0
if [ "${1:-}" = "--typecheck" ]; then
    typecheck=1
    shift
fi

install_args=()
if [ "$typecheck" -eq 1 ]; then
    install_args+=(--with-openclaw)
fi
paths="$("$installer" "${install_args[@]}")"
node_bin="$(printf '%s\n' "$paths" | sed -n 's/^NODE_BIN=//p')"
if [ -z "$node_bin" ]; then
    echo "error: $installer printed no NODE_BIN line" >&2
    exit 1
fi

cd "$plugin_dir"

if [ "$typecheck" -eq 1 ]; then
    openclaw_dir="$(printf '%s\n' "$paths" | sed -n 's/^OPENCLAW_DIR=//p')"
    modules_dir="$(dirname "$openclaw_dir")"
    tsc="$modules_dir/typescript/bin/tsc"
    if [ ! -f "$tsc" ]; then
        echo "error: no TypeScript compiler at $tsc; the openclaw install no longer ships one" >&2
        exit 1
    fi
    # The openclaw package is not a dependency of this folder, so a temporary tsconfig maps its
    # plugin SDK imports to the installed type definitions.
    config_dir="$(mktemp -d)"
    trap 'rm -rf "$config_dir"' EXIT
    cat >"$config_dir/tsconfig.json" <<EOF
{
  "extends": "$plugin_dir/tsconfig.json",
  "compilerOptions": {
    "paths": { "openclaw/plugin-sdk/*": ["$openclaw_dir/dist/plugin-sdk/*.d.ts"] },
    "typeRoots": ["$modules_dir/@types"]
  },
  "include": ["$plugin_dir/index.ts", "$plugin_dir/src/**/*.ts", "$plugin_dir/test/**/*.ts"]
}
EOF
    echo "type-checking with $tsc" >&2
    "$node_bin" "$tsc" -p "$config_dir/tsconfig.json"
fi

# Node 24 runs TypeScript by stripping the types, so no build step is needed.
exec "$node_bin" --test --test-timeout=60000 "$@" "test/*.test.ts"
