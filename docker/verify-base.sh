#!/usr/bin/env bash
# Smoke-test the base image built by build-base.sh: static IPs on a user-defined
# bridge, Redis and RabbitMQ reachable from the host, bind mount, pause/unpause,
# fast `docker stop`. Creates only ts-probe-* containers/network and removes them.
# Traffic goes only to the containers it creates.
#
# Usage: docker/verify-base.sh [IMAGE]   (default time-sync-base:bookworm)
set -euo pipefail

IMG="${1:-time-sync-base:bookworm}"
NET=ts-probe-net
SUBNET=10.251.0.0/24
REDIS_IP=10.251.0.20
RMQ_IP=10.251.0.30
SCRATCH="$(mktemp -d /var/tmp/ts-verify.XXXXXX)"

die()  { echo "verify-base: FAIL: $*" >&2; exit 1; }
ok()   { echo "verify-base: ok: $*"; }
now()  { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
tcp_up() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

cleanup() {
    docker rm -f ts-probe-redis ts-probe-rmq ts-probe-bind >/dev/null 2>&1 || true
    docker network rm "$NET" >/dev/null 2>&1 || true
    rm -rf "$SCRATCH"
}
if docker network inspect "$NET" >/dev/null 2>&1 || docker container inspect ts-probe-redis >/dev/null 2>&1 || docker container inspect ts-probe-rmq >/dev/null 2>&1 || docker container inspect ts-probe-bind >/dev/null 2>&1; then
    rm -rf "$SCRATCH"
    echo "verify-base: FAIL: $NET or ts-probe-* containers already exist; remove them first" >&2
    exit 1
fi
trap cleanup EXIT

docker image inspect "$IMG" >/dev/null 2>&1 || die "image $IMG not found (run docker/build-base.sh)"
command -v redis-cli >/dev/null || die "redis-cli not on host (apt-get install -y redis-tools)"

# a. network with subnet + static IP
docker network create --subnet "$SUBNET" "$NET" >/dev/null || die "network create"
ok "network $NET ($SUBNET)"

# b. redis
docker run -d --name ts-probe-redis --network "$NET" --ip "$REDIS_IP" "$IMG" \
    redis-server --bind 0.0.0.0 --requirepass SECRET --save '' --appendonly no >/dev/null
for _ in $(seq 1 100); do
    [ "$(redis-cli -h "$REDIS_IP" -a SECRET --no-auth-warning ping 2>/dev/null)" = PONG ] && break
    sleep 0.05
done
[ "$(redis-cli -h "$REDIS_IP" -a SECRET --no-auth-warning ping)" = PONG ] || die "redis ping"
ok "redis PONG at $REDIS_IP"

# e. pause / unpause
docker pause ts-probe-redis >/dev/null
if timeout 1 redis-cli -h "$REDIS_IP" -a SECRET --no-auth-warning ping >/dev/null 2>&1; then die "paused redis answered"; fi
docker unpause ts-probe-redis >/dev/null
[ "$(redis-cli -h "$REDIS_IP" -a SECRET --no-auth-warning ping)" = PONG ] || die "redis after unpause"
ok "pause/unpause"

# c. rabbitmq as the rabbitmq user, signal-handling wrapper as PID 1
t0=$(now)
docker run -d --name ts-probe-rmq --hostname ts-rabbit --network "$NET" --ip "$RMQ_IP" \
    -u rabbitmq -e RABBITMQ_DEFAULT_USER=tsuser -e RABBITMQ_DEFAULT_PASS=tspass \
    "$IMG" /usr/lib/rabbitmq/bin/rabbitmq-server >/dev/null
for _ in $(seq 1 1200); do tcp_up "$RMQ_IP" 5672 && break; sleep 0.05; done
tcp_up "$RMQ_IP" 5672 || die "rabbitmq did not open 5672 within 60 s"
ok "rabbitmq accepts TCP on $RMQ_IP:5672 after $(secs "$t0" "$(now)") s"
docker exec ts-probe-rmq rabbitmqctl -q authenticate_user tsuser tspass >/dev/null || die "rabbitmq user tsuser"
ok "rabbitmq user tsuser authenticates"
t0=$(now)
docker stop ts-probe-rmq >/dev/null
code="$(docker inspect -f '{{.State.ExitCode}}' ts-probe-rmq)"
ok "rabbitmq docker stop took $(secs "$t0" "$(now)") s (exit code $code)"

# d. bind mount
mkdir -p "$SCRATCH/ts_client_logs"
docker run --rm --name ts-probe-bind --network "$NET" -v "$SCRATCH/ts_client_logs:/tmp/ts_client_logs" "$IMG" \
    sh -c 'echo "hello from $(hostname)" > /tmp/ts_client_logs/probe'
grep -q hello "$SCRATCH/ts_client_logs/probe" || die "bind mount write"
ok "bind mount write visible on host"

echo "verify-base: all checks passed for $IMG"
