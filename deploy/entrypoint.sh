#!/usr/bin/env bash
# Start one sendbeat process from its Procfile line, the one source of truth for
# process commands (Heroku, the Docker image, compose, Kubernetes and systemd
# all come through here or through a Procfile runner).
#
#   entrypoint.sh web|worker|beat [EXTRA_ARGS...]   exec the Procfile line (+ extra args)
#   entrypoint.sh --print web|worker|beat [ARGS...] print the command it would exec, and exit
#   entrypoint.sh healthcheck                       exit 0 when this container's process is healthy
#   entrypoint.sh COMMAND [ARGS...]                 exec anything else (flask --app app ..., sh)
#
# The Procfile is found at $SENDBEAT_PROCFILE, or else at ../Procfile from this
# script; the command runs from the Procfile's directory, so relative paths in it
# (deploy/gunicorn.conf.py) resolve.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
procfile=${SENDBEAT_PROCFILE:-$here/../Procfile}
state=${SENDBEAT_STATE_FILE:-${TMPDIR:-/tmp}/sendbeat-process}

die() {
    echo "entrypoint: $*" >&2
    exit 64
}

# The command of process type $1, exactly as the Procfile has it.
procfile_command() {
    local type=$1 name command
    [[ -r $procfile ]] || die "no readable Procfile at $procfile"
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line =~ ^[[:space:]]*([A-Za-z0-9_-]+):[[:space:]]*(.+)$ ]] || continue
        name=${BASH_REMATCH[1]}
        command=${BASH_REMATCH[2]}
        if [[ $name == "$type" ]]; then
            printf '%s\n' "${command%"${command##*[![:space:]]}"}"
            return 0
        fi
    done <"$procfile"
    die "process type '$type' is not in $procfile"
}

# True when the Procfile has a process type named $1.
is_process_type() {
    [[ $1 =~ ^[A-Za-z0-9_-]+$ && -r $procfile ]] && grep -Eq "^[[:space:]]*$1:" "$procfile"
}

healthcheck() {
    local type
    type=$(cat "$state" 2>/dev/null || true)
    if [[ $type != web ]]; then
        # worker and beat: the container lives exactly as long as the process (PID 1).
        exit 0
    fi
    exec python3 - "${PORT:-5000}" <<'PY'
import sys
import urllib.request

url = f"http://127.0.0.1:{sys.argv[1]}/healthz"
with urllib.request.urlopen(url, timeout=4) as answer:
    sys.exit(0 if answer.status == 200 else 1)
PY
}

print=0
if [[ ${1:-} == --print ]]; then
    print=1
    shift
fi
[[ $# -gt 0 ]] || die "usage: entrypoint.sh [--print] web|worker|beat [ARGS...] | healthcheck | COMMAND [ARGS...]"

if [[ $1 == healthcheck ]]; then
    healthcheck
fi

if is_process_type "$1"; then
    type=$1
    shift
    command=$(procfile_command "$type")
    if ((print)); then
        if (($#)); then
            printf '%s %s\n' "$command" "$*"
        else
            printf '%s\n' "$command"
        fi
        exit 0
    fi
    cd "$(dirname "$procfile")"
    printf '%s\n' "$type" >"$state" 2>/dev/null || true
    # The Procfile line is shell words (it quotes "app:create_app()"), as a Procfile
    # runner reads it; exec replaces this shell, so the process itself gets SIGTERM.
    eval "set -- $command \"\$@\""
    exec "$@"
fi

if ((print)); then
    printf '%s\n' "$*"
    exit 0
fi
exec "$@"
