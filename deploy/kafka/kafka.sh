#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker+controller) without Docker.
#
#   deploy/kafka/kafka.sh up       start the broker (no-op if it is already running)
#   deploy/kafka/kafka.sh down     stop it (no-op if it is not running)
#   deploy/kafka/kafka.sh status   print whether it runs and answers; exit 0 iff it does
#
# The broker jars come from Maven Central through deploy/kafka/pom.xml, once, into
# .cache/kafka/libs. Everything listens on 127.0.0.1 only.
#
# Environment (all optional):
#   KAFKA_PORT             PLAINTEXT listener port            (default 19092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port     (default 19093)
#   KAFKA_RUN_DIR          pid, log, server.properties        (default <repo>/.run/kafka)
#   KAFKA_DATA_DIR         log.dirs / metadata                (default $KAFKA_RUN_DIR/data)
#   KAFKA_CACHE_DIR        downloaded jars go in .../libs     (default <repo>/.cache/kafka)
#   KAFKA_HEAP_OPTS        JVM heap flags                     (default -Xmx512m -Xms128m)
#   KAFKA_START_TIMEOUT    seconds to wait for readiness      (default 60)
#   KAFKA_STOP_TIMEOUT     seconds to wait after TERM         (default 30)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HOST=127.0.0.1
KAFKA_RUN_DIR="${KAFKA_RUN_DIR:-$ROOT/.run/kafka}"
KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-$KAFKA_RUN_DIR/data}"
KAFKA_CACHE_DIR="${KAFKA_CACHE_DIR:-$ROOT/.cache/kafka}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"

LIBS="$KAFKA_CACHE_DIR/libs"
PID_FILE="$KAFKA_RUN_DIR/kafka.pid"
LOG_FILE="$KAFKA_RUN_DIR/kafka.log"
PROPS="$KAFKA_RUN_DIR/server.properties"
LOG4J="$KAFKA_RUN_DIR/log4j.properties"
CLUSTER_ID_FILE="$KAFKA_RUN_DIR/cluster.id"
BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"

say() { echo "kafka.sh: $*"; }
die() { echo "kafka.sh: error: $*" >&2; exit 1; }

kafka_version() {
    sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml" | head -n1
}

# pid of our running broker, or nothing
running_pid() {
    local pid
    [[ -f "$PID_FILE" ]] || return 0
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'; then
        echo "$pid"
    fi
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$KAFKA_HOST/$1" 2>/dev/null
}

# A real Kafka request (ApiVersions against the broker), via the Kafka admin tool.
broker_answers() {
    timeout 30 java -Xmx128m -XX:TieredStopAtLevel=1 -cp "$LIBS/*" \
        -Dlog4j.configuration="file:$LOG4J" \
        kafka.admin.BrokerApiVersionsCommand --bootstrap-server "$BOOTSTRAP" 2>/dev/null \
        | grep -q "^$KAFKA_HOST:$KAFKA_PORT"
}

fetch_libs() {
    local version stamp
    version="$(kafka_version)"
    [[ -n "$version" ]] || die "cannot read kafka.version from $HERE/pom.xml"
    stamp="$LIBS/.complete-$version"
    if [[ -f "$stamp" ]] && compgen -G "$LIBS/kafka_2.13-$version.jar" >/dev/null; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn (Apache Maven) not found on PATH: needed once to fetch the Kafka jars (Debian: apt-get install maven)"
    say "fetching Kafka $version jars from Maven Central into $LIBS (once)"
    rm -rf "$LIBS"
    mkdir -p "$LIBS"
    mkdir -p "$KAFKA_CACHE_DIR"
    if ! (cd "$HERE" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
            -DoutputDirectory="$LIBS") >"$KAFKA_CACHE_DIR/mvn.log" 2>&1; then
        tail -n 30 "$KAFKA_CACHE_DIR/mvn.log" >&2 || true
        die "mvn could not fetch the Kafka jars (full output: $KAFKA_CACHE_DIR/mvn.log)"
    fi
    touch "$stamp"
}

write_configs() {
    mkdir -p "$KAFKA_RUN_DIR" "$KAFKA_DATA_DIR"
    cat >"$PROPS" <<EOF
# Written by deploy/kafka/kafka.sh — regenerated on every 'up'; do not edit.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$KAFKA_DATA_DIR
num.partitions=4
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
default.replication.factor=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=168
log.segment.bytes=67108864
EOF
    cat >"$LOG4J" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.clients=WARN
EOF
}

format_storage() {
    local cid
    if [[ -f "$KAFKA_DATA_DIR/meta.properties" ]]; then
        return 0
    fi
    if [[ -s "$CLUSTER_ID_FILE" ]]; then
        cid="$(cat "$CLUSTER_ID_FILE")"
    else
        cid="$(java -cp "$LIBS/*" -Dlog4j.configuration="file:$LOG4J" kafka.tools.StorageTool random-uuid | tail -n1)"
        [[ -n "$cid" ]] || die "StorageTool random-uuid returned nothing"
        echo "$cid" >"$CLUSTER_ID_FILE"
    fi
    say "formatting $KAFKA_DATA_DIR (cluster id $cid)"
    java -cp "$LIBS/*" -Dlog4j.configuration="file:$LOG4J" \
        kafka.tools.StorageTool format -t "$cid" -c "$PROPS" >>"$KAFKA_RUN_DIR/format.log" 2>&1 \
        || { tail -n 20 "$KAFKA_RUN_DIR/format.log" >&2; die "kafka storage format failed"; }
}

cmd_up() {
    command -v java >/dev/null 2>&1 || die "java not found on PATH: a JDK/JRE 17+ is needed to run Kafka (Debian: apt-get install openjdk-17-jre-headless)"
    mkdir -p "$KAFKA_RUN_DIR"
    exec 9>"$KAFKA_RUN_DIR/.lock"
    flock -w 120 9 || die "another kafka.sh holds $KAFKA_RUN_DIR/.lock"

    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        say "already running (pid $pid), bootstrap $BOOTSTRAP"
        echo "$BOOTSTRAP"
        return 0
    fi
    rm -f "$PID_FILE"
    if port_open "$KAFKA_PORT"; then
        die "port $KAFKA_HOST:$KAFKA_PORT is already in use by a process this script did not start (pid file $PID_FILE)"
    fi
    if port_open "$KAFKA_CONTROLLER_PORT"; then
        die "controller port $KAFKA_HOST:$KAFKA_CONTROLLER_PORT is already in use by another process"
    fi

    fetch_libs
    write_configs
    format_storage

    local start now
    start="$(date +%s%N)"
    : >"$LOG_FILE"
    # 9>&-: the broker must not inherit the lock fd.
    # setsid: the broker gets its own session, so a Ctrl-C aimed at make/pytest does not
    # kill it uncleanly; 'down' (or the test fixture's teardown) stops it.
    # shellcheck disable=SC2086
    setsid java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dlog4j.configuration="file:$LOG4J" -Dkafka.logs.dir="$KAFKA_RUN_DIR" \
        -cp "$LIBS/*" kafka.Kafka "$PROPS" </dev/null >>"$LOG_FILE" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"

    local deadline=$(( $(date +%s) + KAFKA_START_TIMEOUT ))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            tail -n 30 "$LOG_FILE" >&2 || true
            die "broker exited during start-up (log: $LOG_FILE)"
        fi
        if grep -q 'Kafka Server started' "$LOG_FILE" 2>/dev/null && port_open "$KAFKA_PORT"; then
            break
        fi
        if (( $(date +%s) >= deadline )); then
            tail -n 30 "$LOG_FILE" >&2 || true
            KAFKA_STOP_TIMEOUT=10 stop_pid "$pid"
            rm -f "$PID_FILE"
            die "broker did not become ready within ${KAFKA_START_TIMEOUT}s (log: $LOG_FILE)"
        fi
        sleep 0.25
    done
    now="$(date +%s%N)"
    say "started Kafka $(kafka_version) (pid $pid) in $(( (now - start) / 1000000 )) ms; log $LOG_FILE"
    echo "$BOOTSTRAP"
}

stop_pid() {
    local pid="$1" deadline
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$(( $(date +%s) + KAFKA_STOP_TIMEOUT ))
    while kill -0 "$pid" 2>/dev/null; do
        if (( $(date +%s) >= deadline )); then
            say "broker (pid $pid) did not stop within ${KAFKA_STOP_TIMEOUT}s, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
}

cmd_down() {
    mkdir -p "$KAFKA_RUN_DIR"
    exec 9>"$KAFKA_RUN_DIR/.lock"
    flock -w 120 9 || die "another kafka.sh holds $KAFKA_RUN_DIR/.lock"
    local pid
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$PID_FILE"
        say "not running"
        return 0
    fi
    stop_pid "$pid"
    rm -f "$PID_FILE"
    say "stopped (pid $pid)"
}

cmd_status() {
    local pid
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        say "not running (no live pid in $PID_FILE)"
        return 1
    fi
    if port_open "$KAFKA_PORT" && broker_answers; then
        say "running (pid $pid), answering on $BOOTSTRAP, data $(sed -n 's/^log.dirs=//p' "$PROPS" 2>/dev/null)"
        return 0
    fi
    say "process running (pid $pid) but $BOOTSTRAP does not answer (log: $LOG_FILE)"
    return 1
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
