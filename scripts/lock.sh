#!/usr/bin/env bash
# `make lock`: refresh the committed dependency locks on purpose (never done by setup).
#   requirements.lock       runtime dependencies + the build tools (what a compute host gets)
#   requirements-test.lock  the same versions + the test extras (what make test/demo/bench use)
# Both are pip-compile --generate-hashes output; setup.sh installs them with
# pip install --require-hashes. Resolved against PyPI only (local pip config ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
tool=build/lock-venv
if [ ! -x "$tool/bin/pip-compile" ]; then
  python3 -m venv "$tool"
  "$tool/bin/pip" install -q 'pip-tools>=7.4'
fi
clean_env=(env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null)
common=(-q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url
        --no-emit-find-links --upgrade)
"${clean_env[@]}" "$tool/bin/pip-compile" "${common[@]}" -o requirements.lock \
  pyproject.toml requirements-build.in
# The test lock is constrained to the runtime lock's versions, so both agree.
constraints=build/lock-constraints.txt
grep -E '^[A-Za-z0-9._-]+==' requirements.lock | sed 's/ .*//' > "$constraints"
"${clean_env[@]}" "$tool/bin/pip-compile" "${common[@]}" --extra test \
  --pip-args "-c $constraints" -o requirements-test.lock pyproject.toml requirements-build.in
sed -i "s#-c $constraints#-c requirements.lock (versions only)#" requirements-test.lock
echo "lock: requirements.lock ($(grep -cE '^[A-Za-z0-9._-]+==' requirements.lock) packages)," \
     "requirements-test.lock ($(grep -cE '^[A-Za-z0-9._-]+==' requirements-test.lock) packages)"
