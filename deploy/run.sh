#!/usr/bin/env bash
# Placeholder for `make run`: the lead replaces this with the real worker start-up.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$HERE/kafka/kafka.sh" up
echo "worker not yet wired"
