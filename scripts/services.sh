#!/usr/bin/env bash
# Local Kafka and Redis for development and CI, without Docker.
#
#   scripts/services.sh start    start both and wait until they answer (90 s at most)
#   scripts/services.sh stop     stop what `start` started, and nothing else
#   scripts/services.sh start|stop kafka|redis    the same for one of them
#   scripts/services.sh restart kafka|redis       stop one and start it again with its
#                                data kept (fault tests: a broker restart under load)
#   scripts/services.sh status   say whether each answers; exit 1 when one does not
#   scripts/services.sh env      print export lines for the STREAMREC_* settings:
#                                eval "$(scripts/services.sh env)"
#
# Kafka is Apache Kafka 4.1.1 from Maven Central: scripts/pom.xml lists the jars, mvn
# copies them once into .cache/kafka/libs (again only when the pom changes). One KRaft
# node is both broker and controller. Redis is Debian's redis-server. Both listen on
# 127.0.0.1 only. Missing java, mvn or redis-server are installed with apt-get.
#
# Ports: STREAMREC_KAFKA_PORT (9092), STREAMREC_KAFKA_CONTROLLER_PORT (9093),
# STREAMREC_REDIS_PORT (6379). STREAMREC_REDIS_PASSWORD, when set, becomes Redis's
# requirepass and goes into the URL that `env` prints. STREAMREC_KAFKA_HEAP (768m) is
# the broker's maximum heap.
#
# Run folder: STREAMREC_RUN_DIR, default .run/services:
#   kafka/  server.properties and the broker's data
#   redis/  redis.conf and Redis's working folder
#   logs/   kafka.log (log4j2), kafka.out (JVM output), redis.log
#   pids/   kafka.pid, redis.pid
# Every start is clean: a service that is not running gets its data folder and logs
# wiped before it starts; only `restart` keeps them. `stop` keeps both, so logs can be
# read after a failed run.
#
# Idempotent: `start` does not restart a service whose pid in our pid file is alive and
# ours (its working folder is in the run folder); it only checks that its port answers.
# `stop` signals only those pids (SIGTERM, SIGKILL after 30 s). A port taken by any
# other process is an error, never a reason to touch that process.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_PORT=${STREAMREC_KAFKA_PORT:-9092}
CONTROLLER_PORT=${STREAMREC_KAFKA_CONTROLLER_PORT:-9093}
REDIS_PORT=${STREAMREC_REDIS_PORT:-6379}
REDIS_PASSWORD=${STREAMREC_REDIS_PASSWORD:-}
KAFKA_HEAP=${STREAMREC_KAFKA_HEAP:-768m}
[[ $KAFKA_HEAP =~ ^[0-9]+[mg]$ ]] || {
    echo "services: error: STREAMREC_KAFKA_HEAP must look like 512m or 1g" >&2
    exit 1
}
# restart: start without wiping the data folder (set by cmd_restart)
KEEP_DATA=0
RUN_DIR=$(realpath -m "${STREAMREC_RUN_DIR:-$ROOT/.run/services}")
LOG_DIR=$RUN_DIR/logs
PID_DIR=$RUN_DIR/pids
KAFKA_LIBS=$ROOT/.cache/kafka/libs
START_TIMEOUT_S=90
STOP_TIMEOUT_S=30

PYTHON=$ROOT/.venv/bin/python
[[ -x $PYTHON ]] || PYTHON=python3

KAFKA_JVM_OPTS=(
    -Xms256m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$ROOT/scripts/kafka-log4j2.properties"
    "-Dkafka.logs.dir=$LOG_DIR"
    # Keep logging until Kafka's own shutdown hook has finished.
    -Dlog4j2.shutdownHookEnabled=false
)

log() { printf 'services: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- tools ---------------------------------------------------------------------------

# apt_install PACKAGE...: install Debian packages without starting their daemons.
# Debian's redis-server would otherwise start a system Redis on 6379, our port.
apt_install() {
    local sudo=() policy=/usr/sbin/policy-rc.d made_policy=0 rc=0
    [[ $EUID -eq 0 ]] || sudo=(sudo)
    command -v apt-get >/dev/null || die "no apt-get to install $*: install by hand"
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        made_policy=1
    fi
    log "installing $* with apt-get"
    "${sudo[@]}" apt-get update -qq \
        && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
            apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || rc=$?
    if ((made_policy)); then "${sudo[@]}" rm -f "$policy"; fi
    ((rc == 0)) || die "apt-get could not install $*"
}

ensure_tools() {
    local missing=()
    command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
        || missing+=(redis-server)
    if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
    "$PYTHON" -c 'import aiokafka' 2>/dev/null \
        || die "$PYTHON cannot import aiokafka, needed to check that Kafka answers;" \
            "create the venv first: python3 -m venv .venv &&" \
            ".venv/bin/pip install -e '.[test]'"
}

# The jars are fetched again only when scripts/pom.xml changes (its hash is the stamp).
fetch_kafka_jars() {
    local stamp=$KAFKA_LIBS/.pom.sha256 want
    want=$(sha256sum "$ROOT/scripts/pom.xml" | cut -d' ' -f1)
    if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then return; fi
    command -v mvn >/dev/null || apt_install maven
    if [[ -f $stamp ]]; then rm -rf "$KAFKA_LIBS"; fi # the pom changed: drop old jars
    log "fetching the Kafka jars with mvn into .cache/kafka/libs (first start only)"
    # An absolute outputDirectory: Maven resolves a relative one from the pom's folder.
    mvn -q -B -f "$ROOT/scripts/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        "-DoutputDirectory=$KAFKA_LIBS" -DincludeScope=runtime >&2 \
        || die "mvn could not fetch the Kafka jars; its messages are above"
    echo "$want" >"$stamp"
}

# --- processes and ports -------------------------------------------------------------

alive() { # alive PID: the process exists and is not a zombie
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# our_pid NAME: print the pid in our pid file if that process is alive and is ours.
# "Ours" means its working folder lies in the run folder, which guards against a pid
# that was reused by an unrelated process. A stale pid file is removed.
our_pid() {
    local file=$PID_DIR/$1.pid pid cwd
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid"; then
        cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || cwd=
        if [[ $cwd == "$RUN_DIR"/* ]]; then
            echo "$pid"
            return 0
        fi
    fi
    rm -f "$file"
    return 1
}

port_open() { timeout 2 bash -c ": >/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

require_free_port() { # require_free_port PORT VARIABLE
    if port_open "$1"; then
        die "127.0.0.1:$1 is taken by a process this script did not start;" \
            "stop it or pick another port with $2"
    fi
}

redis_answers() {
    local auth=()
    [[ -z $REDIS_PASSWORD ]] || auth=("REDISCLI_AUTH=$REDIS_PASSWORD")
    [[ $(env "${auth[@]}" timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping \
        2>/dev/null) == PONG ]]
}

# A real client must get the cluster metadata: an open port alone is not a ready broker.
kafka_answers() {
    timeout 20 "$PYTHON" - "127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1 <<'EOF'
import asyncio
import sys

from aiokafka.admin import AIOKafkaAdminClient


async def list_topics() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=5000)
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()


asyncio.run(list_topics())
EOF
}

answers() { "${1}_answers"; }

# launch NAME DIR OUTPUT COMMAND...: run COMMAND in the background from DIR, its output
# appended to OUTPUT, its pid in pids/NAME.pid. The working folder is set before the
# fork, so that our_pid recognises the new pid at once.
launch() {
    local name=$1 dir=$2 output=$3
    shift 3
    cd "$dir"
    nohup "$@" >>"$output" 2>&1 </dev/null &
    echo $! >"$PID_DIR/$name.pid"
    cd "$ROOT"
}

# --- kafka ---------------------------------------------------------------------------

write_kafka_config() { # write_kafka_config FILE DATA_DIR
    cat >"$1" <<EOF
# Written by scripts/services.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$2
# Topics appear on first use, with as many partitions as the worker expects.
auto.create.topics.enable=true
num.partitions=8
# One node: internal topics with one replica, few partitions, no rebalance delay.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# A small machine: fewer threads than the defaults.
num.network.threads=2
num.io.threads=4
EOF
}

start_kafka() {
    local dir=$RUN_DIR/kafka cluster_id
    fetch_kafka_jars

    if ((KEEP_DATA)) && [[ -f $dir/data/meta.properties ]]; then
        write_kafka_config "$dir/server.properties" "$dir/data"
        log "starting kafka again on 127.0.0.1:$KAFKA_PORT with its data"
        launch kafka "$dir" "$LOG_DIR/kafka.out" java "${KAFKA_JVM_OPTS[@]}" \
            -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties"
        return
    fi
    rm -rf "$dir" "$LOG_DIR"/kafka.*
    mkdir -p "$dir/data"
    write_kafka_config "$dir/server.properties" "$dir/data"

    # A cluster id is 16 random bytes in URL-safe base64; Kafka avoids a leading '-'.
    cluster_id=-
    while [[ $cluster_id == -* ]]; do
        cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    done
    java "${KAFKA_JVM_OPTS[@]}" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format \
        -t "$cluster_id" -c "$dir/server.properties" >>"$LOG_DIR/kafka.out" 2>&1 \
        || {
            show_log_tail kafka
            die "formatting the Kafka storage failed; see $(log_file kafka)"
        }

    log "starting kafka on 127.0.0.1:$KAFKA_PORT (controller $CONTROLLER_PORT)"
    launch kafka "$dir" "$LOG_DIR/kafka.out" java "${KAFKA_JVM_OPTS[@]}" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties"
}

# --- redis ---------------------------------------------------------------------------

start_redis() {
    local dir=$RUN_DIR/redis password
    rm -rf "$dir" "$LOG_DIR/redis.log"
    mkdir -p "$dir"
    (
        umask 077 # the file may hold the password
        cat >"$dir/redis.conf" <<EOF
# Written by scripts/services.sh; rewritten on every start.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize no
save ""
appendonly no
dir "$dir"
logfile ""
EOF
        if [[ -n $REDIS_PASSWORD ]]; then
            password=${REDIS_PASSWORD//\\/\\\\}
            printf 'requirepass "%s"\n' "${password//\"/\\\"}" >>"$dir/redis.conf"
        fi
    )

    log "starting redis on 127.0.0.1:$REDIS_PORT"
    launch redis "$dir" "$LOG_DIR/redis.log" redis-server "$dir/redis.conf"
}

# --- commands ------------------------------------------------------------------------

log_file() { # log_file NAME: where to look when NAME fails
    case $1 in
        kafka) echo "$LOG_DIR/kafka.log (JVM errors: $LOG_DIR/kafka.out)" ;;
        redis) echo "$LOG_DIR/redis.log" ;;
    esac
}

show_log_tail() {
    local file
    for file in "$LOG_DIR/$1".*; do
        [[ -s $file ]] || continue
        log "last lines of $file:"
        tail -n 20 "$file" >&2
    done
}

wait_until_answering() { # wait_until_answering NAME...
    local deadline=$((SECONDS + START_TIMEOUT_S)) name pending=("$@") left
    while ((${#pending[@]})); do
        left=()
        for name in "${pending[@]}"; do
            if answers "$name"; then
                log "$name answers"
            elif ! our_pid "$name" >/dev/null; then
                show_log_tail "$name"
                die "$name exited while starting; see $(log_file "$name");" \
                    "scripts/services.sh stop cleans up"
            else
                left+=("$name")
            fi
        done
        pending=("${left[@]}")
        if ((${#pending[@]} && SECONDS >= deadline)); then
            for name in "${pending[@]}"; do show_log_tail "$name"; done
            die "${pending[*]} did not answer within ${START_TIMEOUT_S} s;" \
                "see $(log_file "${pending[0]}"); scripts/services.sh stop cleans up"
        fi
        if ((${#pending[@]})); then sleep 0.5; fi
    done
}

cmd_start() { # cmd_start NAME...
    local began=$SECONDS name pid stopped=()
    ensure_tools
    mkdir -p "$LOG_DIR" "$PID_DIR"
    for name in "$@"; do
        if pid=$(our_pid "$name"); then
            log "$name already started (pid $pid)"
        else
            stopped+=("$name")
        fi
    done
    # Every port is checked before anything starts, so a conflict leaves nothing behind.
    for name in "${stopped[@]}"; do
        case $name in
            kafka)
                require_free_port "$KAFKA_PORT" STREAMREC_KAFKA_PORT
                require_free_port "$CONTROLLER_PORT" STREAMREC_KAFKA_CONTROLLER_PORT
                ;;
            redis) require_free_port "$REDIS_PORT" STREAMREC_REDIS_PORT ;;
        esac
    done
    for name in "${stopped[@]}"; do "start_$name"; done
    wait_until_answering "$@"
    log "ready after $((SECONDS - began)) s; logs in $LOG_DIR"
}

stop_one() {
    local name=$1 pid
    if ! pid=$(our_pid "$name"); then
        log "$name is not running"
        return
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$STOP_TIMEOUT_S"; then
        log "$name did not exit within ${STOP_TIMEOUT_S} s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || die "$name (pid $pid) is still alive after SIGKILL"
    fi
    rm -f "$PID_DIR/$name.pid"
}

wait_gone() { # wait_gone PID SECONDS: whether PID exited within SECONDS
    local deadline=$((SECONDS + $2))
    while alive "$1"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

cmd_stop() { # cmd_stop NAME...
    local name
    for name in "$@"; do stop_one "$name"; done
}

# cmd_restart NAME: stop it (if ours and running) and start it with its data kept.
cmd_restart() {
    stop_one "$1"
    KEEP_DATA=1
    cmd_start "$1"
}

# services NAME...: the names given, checked; both when none is.
services() {
    local name
    (($#)) || set -- kafka redis
    for name in "$@"; do
        [[ $name == kafka || $name == redis ]] || {
            echo "usage: $0 start|stop [kafka|redis] | restart kafka|redis" >&2
            exit 2
        }
    done
    echo "$@"
}

cmd_status() {
    local rc=0 name port pid owner
    for name in kafka redis; do
        port=$KAFKA_PORT
        [[ $name == kafka ]] || port=$REDIS_PORT
        if pid=$(our_pid "$name"); then
            owner="started by this script, pid $pid"
        else
            owner="not started by this script"
        fi
        if answers "$name"; then
            echo "$name: answers on 127.0.0.1:$port ($owner)"
        else
            echo "$name: does not answer on 127.0.0.1:$port ($owner)"
            rc=1
        fi
    done
    return "$rc"
}

urlencode() {
    local LC_ALL=C text=$1 out='' char i
    for ((i = 0; i < ${#text}; i++)); do
        char=${text:i:1}
        case $char in
            [a-zA-Z0-9._~-]) out+=$char ;;
            *) printf -v char '%%%02X' "'$char" && out+=$char ;;
        esac
    done
    printf '%s' "$out"
}

cmd_env() {
    local userinfo=''
    [[ -z $REDIS_PASSWORD ]] || userinfo=":$(urlencode "$REDIS_PASSWORD")@"
    printf 'export STREAMREC_KAFKA_BOOTSTRAP=%q\n' "127.0.0.1:$KAFKA_PORT"
    printf 'export STREAMREC_REDIS_URL=%q\n' \
        "redis://${userinfo}127.0.0.1:$REDIS_PORT/0"
}

main() {
    local command=${1:-} names
    shift || true
    case $command in
        start | stop | restart)
            names=$(services "$@")
            if [[ $command == restart && $# -ne 1 ]]; then
                echo "usage: $0 restart kafka|redis" >&2
                exit 2
            fi
            # shellcheck disable=SC2086 # the names are single words
            "cmd_$command" $names
            ;;
        status) cmd_status ;;
        env) cmd_env ;;
        *)
            echo "usage: $0 start|stop [kafka|redis] | restart kafka|redis | status | env" >&2
            exit 2
            ;;
    esac
}

main "$@"
