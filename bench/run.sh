#!/usr/bin/env bash
# bench/run.sh — `make bench`: relayq against Postfix as a relay, on this machine, in one run.
#
# What it does
#   1. Installs Postfix from Debian if smtp-source/smtp-sink/postfix are missing (needs root and
#      apt). The package is preseeded "No configuration", so it neither prompts nor sets up a
#      system mail server; if the install nevertheless left a system Postfix running, it is
#      stopped. A system Postfix that was running before is left alone (we use other ports).
#   2. Builds relayq (`make build`, CGO_ENABLED=0) and bench/cmd/benchsink.
#   3. Starts, all on 127.0.0.1 and all under one temp dir:
#        next hop   the sink every relay delivers to (NEXT_HOP):
#                     smtp-sink  (default, as the issue sets it up) Postfix's sink with -c, whose
#                                counter lines `benchsink follow` reads to know when the last
#                                message of a run arrived;
#                     benchsink  our Go sink (bench/cmd/benchsink), which counts in-process; it
#                                costs more CPU per message than smtp-sink, on the same 2 CPUs;
#        smtp-sink  a second, plain one (no counter), for the direct ceiling as the issue defines it;
#        Postfix    a private instance: `postfix -c $TMP/postfix/etc`, its own queue and data
#                   directories, listening on 127.0.0.1 only, relayhost = the next hop. It never
#                   reads or writes /etc/postfix or /var/spool/postfix;
#        relayq     `relayq serve`, smart host = the next hop, admin (/metrics) on loopback.
#   4. For each message size (1 KiB × 5000, then 100 KiB × 1000), ROUNDS times, alternating:
#        Postfix     smtp-source → Postfix → next hop, timed from start until the next hop has
#                    counted every message (the time is taken by the counter, not polled)
#        relayq      smtp-source → relayq  → next hop, same
#        ceiling     smtp-source → smtp-sink (wall time of smtp-source: its last 250 is the sink's)
#        next hop    smtp-source → the next hop directly, timed like the relays
#      and prints the medians in msgs/s, relayq/Postfix, relayq as % of both ceilings, the CPU
#      time per message of each relay (all its processes, from /proc: robust when the machine is
#      busy with other work, unlike the rates) and the p99 of relayq_accept_duration_seconds
#      (DATA to 250) over relayq's runs, from its /metrics.
#   5. Prints the machine (CPUs, disk and its serial create+write+fsync rate) and the versions.
#   Everything it started is stopped and the temp dir removed on exit, Ctrl-C included.
#
# Equal durability: Postfix fsyncs every queue file before its 250 (the default, kept);
# relayq commits every message with pebble.Sync before its 250. Both relay through the same
# sink, with at most 20 outbound connections. The Postfix settings (main.cf below) are the
# defaults except what a private loopback relay needs, plus:
#   in_flow_delay = 0               the default 1s stalls smtpd whenever the queue manager is
#                                   behind, which in a 20-connection burst is at once;
#                                   relayq has no such throttle either
#   smtpd_client_connection_count_limit = 50, smtpd_client_connection_rate_limit = 0,
#   smtpd_error_sleep_time = 0      (defaults spelled out) no per-client throttling
#   default_destination_concurrency_limit = 20   (default) = relayq's per-destination cap
# relayq runs on its defaults (logging, metrics, Received headers, per-recipient state all on)
# except max_connections_per_source = 50, Postfix's per-client limit: smtp-source opens a new
# connection per message, and the next one can arrive before the server has seen the last one
# close, which relayq's default 20 answers with 421.
#
# Environment
#   ROUNDS=5            runs of each kind per size (medians over them)
#   SESSIONS=20         smtp-source parallel sessions (-s)
#   SMALL_N=5000 SMALL_LEN=1024     messages and size of the first set
#   LARGE_N=1000 LARGE_LEN=102400   the same for the second set
#   NEXT_HOP=smtp-sink  what both relays deliver to: smtp-sink or benchsink (see above)
#   PORT_BASE=25250     ports PORT_BASE+1 … +6 on 127.0.0.1 are used
#   RUN_TIMEOUT=300s    longest a single run may take
#   KEEP=1              keep the temp dir (logs, queues) for a look afterwards
#   SETTLE_IDLE=0.3 SETTLE_MAX=30   before every run, wait until Postfix's queue is empty and
#                       neither relay used CPU for SETTLE_IDLE s (at most SETTLE_MAX s; see settle)
set -euo pipefail

ROUNDS=${ROUNDS:-5}
SESSIONS=${SESSIONS:-20}
SMALL_N=${SMALL_N:-5000} SMALL_LEN=${SMALL_LEN:-1024}
LARGE_N=${LARGE_N:-1000} LARGE_LEN=${LARGE_LEN:-102400}
PORT_BASE=${PORT_BASE:-25250}
RUN_TIMEOUT=${RUN_TIMEOUT:-300s}
KEEP=${KEEP:-0}
SETTLE_IDLE=${SETTLE_IDLE:-0.3}
SETTLE_MAX=${SETTLE_MAX:-30}
NEXT_HOP=${NEXT_HOP:-smtp-sink}
[[ $NEXT_HOP == smtp-sink || $NEXT_HOP == benchsink ]] || { echo "bench: NEXT_HOP is smtp-sink or benchsink" >&2; exit 2; }

SINK_PORT=$((PORT_BASE + 1)) CTL_PORT=$((PORT_BASE + 2)) SMTPSINK_PORT=$((PORT_BASE + 3))
POSTFIX_PORT=$((PORT_BASE + 4)) RELAYQ_PORT=$((PORT_BASE + 5)) ADMIN_PORT=$((PORT_BASE + 6))
CTL=127.0.0.1:$CTL_PORT
FROM=bench@source.example
TO=rcpt@sink.example

cd "$(dirname "$0")/.."

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 1; }

# ---------------------------------------------------------------- install
master_running() { grep -qsx master /proc/[0-9]*/comm; } # a Postfix master, any instance
install_postfix() {
	if [[ -x /usr/sbin/smtp-source && -x /usr/sbin/smtp-sink && -x /usr/sbin/postfix ]]; then
		return
	fi
	command -v apt-get >/dev/null || die "no apt-get: install Postfix (smtp-source, smtp-sink, postfix) yourself"
	local was_running=0
	master_running && was_running=1
	log "installing postfix from Debian (no configuration, no system mail server)…"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
	if [[ $was_running == 0 ]] && master_running; then
		log "the package started a system Postfix; stopping it"
		postfix stop >/dev/null 2>&1 || true
	fi
}

# ---------------------------------------------------------------- processes
TMP=
PIDS=()
POSTFIX_UP=0
cleanup() {
	local rc=$? i
	trap - EXIT INT TERM
	if [[ $POSTFIX_UP == 1 ]]; then
		postfix -c "$TMP/postfix/etc" stop >/dev/null 2>&1 || true
		for ((i = 0; i < 100; i++)); do # up to 5 s for the master to exit before its queue goes
			[[ -n ${POSTFIX_PID:-} ]] && kill -0 "$POSTFIX_PID" 2>/dev/null || break
			sleep 0.05
		done
	fi
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ -n $TMP && -d $TMP ]]; then
		if [[ $KEEP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # wait_port PORT NAME
	local i
	for ((i = 0; i < 200; i++)); do
		if ! port_free "$1"; then return 0; fi
		sleep 0.05
	done
	die "$2 did not start listening on 127.0.0.1:$1"
}

# ---------------------------------------------------------------- Postfix instance
start_postfix() {
	local pf=$TMP/postfix
	mkdir -p "$pf/etc" "$pf/queue" "$pf/data"
	chown postfix "$pf/data"
	cat >"$pf/etc/main.cf" <<-EOF
		# private benchmark instance, made by bench/run.sh
		compatibility_level = 3.6
		queue_directory = $pf/queue
		data_directory = $pf/data
		mail_owner = postfix
		setgid_group = postdrop
		myhostname = postfix.bench.invalid
		inet_interfaces = 127.0.0.1
		inet_protocols = ipv4
		mynetworks = 127.0.0.0/8
		mydestination =
		local_recipient_maps =
		alias_maps =
		alias_database =
		relay_domains =
		relayhost = [127.0.0.1]:$SINK_PORT
		maillog_file = $pf/maillog
		maillog_file_prefixes = $pf
		smtputf8_enable = no
		biff = no
		# throughput: see the top of bench/run.sh
		in_flow_delay = 0
		smtpd_client_connection_count_limit = 50
		smtpd_client_connection_rate_limit = 0
		smtpd_error_sleep_time = 0
		default_destination_concurrency_limit = 20
	EOF
	cat >"$pf/etc/master.cf" <<-EOF
		# service type  private unpriv  chroot  wakeup  maxproc command
		127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd
		pickup    unix  n       -       n       60      1       pickup
		cleanup   unix  n       -       n       -       0       cleanup
		qmgr      unix  n       -       n       300     1       qmgr
		rewrite   unix  -       -       n       -       -       trivial-rewrite
		bounce    unix  -       -       n       -       0       bounce
		defer     unix  -       -       n       -       0       bounce
		trace     unix  -       -       n       -       0       bounce
		verify    unix  -       -       n       -       1       verify
		flush     unix  n       -       n       1000?   0       flush
		proxymap  unix  -       -       n       -       -       proxymap
		smtp      unix  -       -       n       -       -       smtp
		relay     unix  -       -       n       -       -       smtp
		showq     unix  n       -       n       -       -       showq
		error     unix  -       -       n       -       -       error
		retry     unix  -       -       n       -       -       error
		discard   unix  -       -       n       -       -       discard
		anvil     unix  -       -       n       -       1       anvil
		scache    unix  -       -       n       -       1       scache
		postlog   unix-dgram n  -       n       -       1       postlogd
	EOF
	postfix -c "$pf/etc" check || die "postfix check failed for $pf/etc"
	POSTFIX_UP=1 # from here on, cleanup stops it (harmless if it did not start)
	postfix -c "$pf/etc" start >/dev/null 2>&1 || { cat "$pf/maillog" >&2 2>/dev/null; die "postfix did not start"; }
	wait_port "$POSTFIX_PORT" postfix
	POSTFIX_PID=$(tr -d ' ' <"$pf/queue/pid/master.pid")
}

# ---------------------------------------------------------------- runs
# run_relay PORT N LEN: smtp-source into a relay; prints the seconds until the sink had all N.
run_relay() {
	local port=$1 n=$2 len=$3 out
	"$SINK" mark -ctl "$CTL" -n "$n" >/dev/null
	if ! smtp-source -s "$SESSIONS" -m "$n" -l "$len" -f "$FROM" -t "$TO" "127.0.0.1:$port" \
		>>"$TMP/smtp-source.log" 2>&1; then
		tail -3 "$TMP/smtp-source.log" >&2
		die "smtp-source into 127.0.0.1:$port failed (KEEP=1 keeps the logs)"
	fi
	out=$("$SINK" wait -ctl "$CTL" -timeout "$RUN_TIMEOUT") || die "run into 127.0.0.1:$port did not complete"
	echo "${out%% *}"
}

# run_direct N LEN: smtp-source into smtp-sink, timed by smtp-source's wall clock.
run_direct() {
	local n=$1 len=$2 t0 t1
	t0=$(date +%s.%N)
	smtp-source -s "$SESSIONS" -m "$n" -l "$len" -f "$FROM" -t "$TO" "127.0.0.1:$SMTPSINK_PORT" \
		>>"$TMP/smtp-source.log" 2>&1 || die "smtp-source into smtp-sink failed"
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }'
}

# tree_ticks PID: CPU time (clock ticks) of PID and of its children, reaped or running. Postfix
# is a master process and its daemons, all its children; relayq is one process.
tree_ticks() {
	cat /proc/[0-9]*/stat 2>/dev/null | sed -E 's/^([0-9]+) \(.*\) /\1 /' |
		awk -v p="$1" '$1 == p { s += $13 + $14 + $15 + $16 } $3 == p { s += $13 + $14 } END { print s + 0 }'
}

# settle: wait, before a timed run, until the relays are idle: Postfix's queue holds no message
# and neither Postfix nor relayq used CPU for SETTLE_IDLE seconds (at most SETTLE_MAX seconds,
# then it goes on). A run is timed until the next hop has every message, but Postfix removes a
# queue file only after the next hop's 250, and its log daemon writes a few lines per message:
# without this wait, that work (thousands of unlinks and their journal commits) ran into the
# next run, always relayq's. settle NEXT logs the seconds it waited before NEXT to $TMP/settle.log.
settle() {
	local t0=$SECONDS s0 a b
	s0=$(date +%s.%N)
	while ((SECONDS - t0 < SETTLE_MAX)); do
		if [[ -n $(find "$TMP/postfix/queue/incoming" "$TMP/postfix/queue/active" \
			"$TMP/postfix/queue/deferred" -type f -print -quit 2>/dev/null) ]]; then
			sleep 0.05
			continue
		fi
		a=$(($(tree_ticks "$POSTFIX_PID") + $(tree_ticks "$RELAYQ_PID")))
		sleep "$SETTLE_IDLE"
		b=$(($(tree_ticks "$POSTFIX_PID") + $(tree_ticks "$RELAYQ_PID")))
		((a == b)) && break
	done
	awk -v a="$s0" -v b="$(date +%s.%N)" -v n="$1" 'BEGIN { printf "%s %.2f\n", n, b - a }' >>"$TMP/settle.log"
}

median() { sort -g | awk '{ v[NR] = $1 } END { printf "%.0f\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }

# bench_size LABEL N LEN
bench_size() {
	local label=$1 n=$2 len=$3 r t pf rq dx db pf_cpu rq_cpu
	local -a PF=() RQ=() DX=() DB=()
	echo
	echo "== $label: smtp-source -s $SESSIONS -m $n -l $len, $ROUNDS rounds (msgs/s, end to end) =="
	"$SINK" scrape "http://127.0.0.1:$ADMIN_PORT/metrics" >"$TMP/metrics.before" 2>/dev/null || true
	pf_cpu=$(tree_ticks "$POSTFIX_PID") rq_cpu=$(tree_ticks "$RELAYQ_PID")
	printf '%-6s %10s %10s %14s %14s\n' round postfix relayq "smtp-sink" "next hop"
	for ((r = 1; r <= ROUNDS; r++)); do
		settle postfix
		t=$(run_relay "$POSTFIX_PORT" "$n" "$len")
		pf=$(rate "$n" "$t")
		settle relayq
		t=$(run_relay "$RELAYQ_PORT" "$n" "$len")
		rq=$(rate "$n" "$t")
		settle smtp-sink
		t=$(run_direct "$n" "$len")
		dx=$(rate "$n" "$t")
		settle next-hop
		"$SINK" mark -ctl "$CTL" -n "$n" >/dev/null
		smtp-source -s "$SESSIONS" -m "$n" -l "$len" -f "$FROM" -t "$TO" "127.0.0.1:$SINK_PORT" \
			>>"$TMP/smtp-source.log" 2>&1 || die "smtp-source into the next hop failed"
		db=$("$SINK" wait -ctl "$CTL" -timeout "$RUN_TIMEOUT") || die "direct run into the next hop did not complete"
		db=$(rate "$n" "${db%% *}")
		printf '%-6s %10s %10s %14s %14s\n' "$r" "$pf" "$rq" "$dx" "$db"
		PF+=("$pf") RQ+=("$rq") DX+=("$dx") DB+=("$db")
	done
	"$SINK" scrape "http://127.0.0.1:$ADMIN_PORT/metrics" >"$TMP/metrics.after" 2>/dev/null || true
	pf_cpu=$(($(tree_ticks "$POSTFIX_PID") - pf_cpu)) rq_cpu=$(($(tree_ticks "$RELAYQ_PID") - rq_cpu))
	pf=$(printf '%s\n' "${PF[@]}" | median) rq=$(printf '%s\n' "${RQ[@]}" | median)
	dx=$(printf '%s\n' "${DX[@]}" | median) db=$(printf '%s\n' "${DB[@]}" | median)
	printf '%-6s %10s %10s %14s %14s\n' median "$pf" "$rq" "$dx" "$db"
	awk -v pf="$pf" -v rq="$rq" -v dx="$dx" -v db="$db" 'BEGIN {
		printf "relayq / Postfix:                    %.2f×\n", rq / pf
		printf "relayq / ceiling (smtp-sink):        %.0f %%\n", 100 * rq / dx
		printf "relayq / next hop direct:            %.0f %%\n", 100 * rq / db
	}'
	awk -v p="$pf_cpu" -v q="$rq_cpu" -v m=$((ROUNDS * n)) -v hz="$(getconf CLK_TCK)" 'BEGIN {
		printf "CPU per message:                     Postfix %.2f ms, relayq %.2f ms\n", 1000 * p / hz / m, 1000 * q / hz / m
	}'
	printf 'relayq p99 DATA→250 (accept metric): %s\n' \
		"$("$SINK" quantile -q 0.99 -metric relayq_accept_duration_seconds "$TMP/metrics.before" "$TMP/metrics.after")"
}

# ---------------------------------------------------------------- main
[[ $(id -u) == 0 ]] || die "run as root (sudo make bench): Postfix's master must be started by root, and apt needs it"
command -v go >/dev/null || die "Go is needed to build relayq"
install_postfix
export PATH=$PATH:/usr/sbin
for p in $SINK_PORT $CTL_PORT $SMTPSINK_PORT $POSTFIX_PORT $RELAYQ_PORT $ADMIN_PORT; do
	port_free "$p" || die "127.0.0.1:$p is in use; set PORT_BASE to another range"
done

TMP=$(mktemp -d /tmp/relayq-bench.XXXXXX)
chmod 755 "$TMP" # Postfix's daemons run as user postfix and must reach their queue

log "building relayq and benchsink…"
make -s build >/dev/null
CGO_ENABLED=0 go build -o "$TMP/benchsink" ./bench/cmd/benchsink
SINK=$TMP/benchsink

if [[ $NEXT_HOP == benchsink ]]; then
	"$SINK" serve -smtp "127.0.0.1:$SINK_PORT" -ctl "$CTL" >"$TMP/benchsink.log" 2>&1 &
	PIDS+=($!)
else # smtp-sink -c prints a counter line per event; the follower serves the control port from it
	mkfifo "$TMP/next-hop.fifo"
	"$SINK" follow -ctl "$CTL" <"$TMP/next-hop.fifo" >"$TMP/benchsink.log" 2>&1 &
	PIDS+=($!)
	smtp-sink -c -4 -u postfix "127.0.0.1:$SINK_PORT" 1024 >"$TMP/next-hop.fifo" 2>&1 &
	PIDS+=($!)
fi
smtp-sink -4 -u postfix "127.0.0.1:$SMTPSINK_PORT" 1024 >"$TMP/smtp-sink.log" 2>&1 &
PIDS+=($!)
wait_port "$SINK_PORT" "next hop ($NEXT_HOP)"
wait_port "$CTL_PORT" "benchsink control"
wait_port "$SMTPSINK_PORT" smtp-sink

start_postfix

cat >"$TMP/relayq.toml" <<-EOF
	hostname = "relayq.bench.invalid"
	[limits]
	max_connections_per_source = 50
EOF
bin/relayq serve --config "$TMP/relayq.toml" --listen "127.0.0.1:$RELAYQ_PORT" --data-dir "$TMP/relayq" \
	--smarthost "127.0.0.1:$SINK_PORT" --smarthost-tls none --admin "127.0.0.1:$ADMIN_PORT" \
	--log-format json >"$TMP/relayq.log" 2>&1 &
RELAYQ_PID=$!
PIDS+=($!)
wait_port "$RELAYQ_PORT" relayq

echo "relayq bench — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine:  $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)," \
	"$(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
echo "disk:     $TMP on $(df --output=source,fstype "$TMP" | tail -1 | awk '{ print $1 " (" $2 ")" }')," \
	"$("$SINK" fsyncs -dir "$TMP" -for 2s) serial create+write(1 KiB)+fsync/s"
echo "load:     $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at the start; other work on the machine skews every figure"
echo "versions: $(bin/relayq version | head -1), Postfix $(postconf -c "$TMP/postfix/etc" -h mail_version)," \
	"$(go version | awk '{ print $3 }')"

bench_size "1 KiB" "$SMALL_N" "$SMALL_LEN"
bench_size "100 KiB" "$LARGE_N" "$LARGE_LEN"

echo
echo "load:     $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at the end"
sent=$((ROUNDS * 3 * (SMALL_N + LARGE_N)))
got=$("$SINK" count -ctl "$CTL")
echo "next hop: $NEXT_HOP, $got messages received, $sent sent through it ($((got - sent)) extra = duplicates)"
errs=$(grep -c -E '"level":"(error|fatal|panic)"' "$TMP/relayq.log" || true)
warns=$(grep -c '"level":"warn"' "$TMP/relayq.log" || true)
echo "relayq log: $errs errors, $warns warnings"
if [[ $((errs + warns)) -gt 0 ]]; then
	grep -E '"level":"(warn|error|fatal|panic)"' "$TMP/relayq.log" | head -5
fi
