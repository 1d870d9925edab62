#!/usr/bin/env bash
# Set up, then run the main job: SET on the embedded digits data. Extra arguments go to `evosparse train`.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$root"
exec evosparse train "$@"
