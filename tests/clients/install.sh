#!/bin/bash
# The SMTP client libraries the relay is tested against (tests/e2e/test_clients.py): nodemailer, current
# and the 6.x that @atproto/pds pins, from the npm registry. Runs under the machine's Node.
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-audit --no-fund >/dev/null
