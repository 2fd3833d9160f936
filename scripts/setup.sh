#!/usr/bin/env bash
# Installs and starts what time-sync needs on a fresh Debian 12 machine, idempotently:
# redis-server and RabbitMQ (Debian packages; RabbitMQ started on 127.0.0.1:5672; tests and tsc
# start their own redis-server processes), debootstrap (to build images without a registry), a
# Docker engine (started if none answers), pika (the Python protocol test), Chromium and its
# WebDriver (the dashboard's browser tests), the NTP clients ntpdate and sntp and the NTP server
# chronyd (not started as a service: the NTP tests run their own), and rustfmt/clippy.
# Safe to run again: it only does what is missing.
#
# TS_REQUIRE_DOCKER=1 (set by scripts/test.sh) makes a Docker engine that cannot be started an
# error; otherwise (quickstart) it is a warning and tsc falls back to local processes.
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs Debian packages and starts services)"
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
if command -v rustup >/dev/null && ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1; then
  log "adding rustfmt and clippy"
  rustup component add rustfmt clippy >/dev/null
fi

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker >/dev/null || need+=(docker.io)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v ntpdate >/dev/null || need+=(ntpsec-ntpdate)
command -v stress-ng >/dev/null || need+=(stress-ng)  # cargo bench --bench sync -- --stress
command -v sntp >/dev/null || need+=(sntp)
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt_install "${need[@]}"
fi

# chronyd serves the host clock to the NTP-upstream tests on loopback (`chronyd -x`: it never
# sets the system clock). The package's own service must not start: installed with a
# policy-rc.d that forbids starting services, unless the machine already has one.
if ! command -v chronyd >/dev/null; then
  log "installing chrony (its service is not started)"
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  apt_install chrony
  [ -z "$made_policy" ] || rm -f "$policy"
fi

# The protocol-compatibility test runs a Python client written from docs/PROTOCOL.md: pika for
# AMQP, cryptography for the seals (Ed25519, HMAC-SHA256).
for mod in pika cryptography; do
  if ! python3 -c "import $mod" 2>/dev/null; then
    log "installing the Python module $mod for the protocol test"
    # Debian's package serves /usr/bin/python3; a python3 of its own (pyenv, venv) needs pip.
    apt_install "python3-$mod" || true
    python3 -c "import $mod" 2>/dev/null || python3 -m pip install -q "$mod" \
      || die "cannot install $mod for $(command -v python3) (apt python3-$mod or pip failed)"
    python3 -c "import $mod" 2>/dev/null \
      || die "$mod is not importable by $(command -v python3) (apt install python3-$mod)"
  fi
done

port_open() { (echo >"/dev/tcp/$1/$2") 2>/dev/null; }

if ! port_open 127.0.0.1 5672; then
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for i in $(seq 1 90); do
    port_open 127.0.0.1 5672 && break
    [ "$i" -eq 90 ] && die "RabbitMQ did not open 127.0.0.1:5672 within 90 s (see /var/log/rabbitmq/)"
    sleep 1
  done
  # The port opens a moment before the node accepts commands.
  rabbitmqctl -q await_startup >/dev/null 2>&1 || true
  log "RabbitMQ is up"
fi

if ! docker info >/dev/null 2>&1; then
  log "no Docker engine answers; starting dockerd"
  command -v dockerd >/dev/null || die "dockerd not found (apt-get install docker.io)"
  nohup dockerd --iptables=false --ip6tables=false --bridge=none >/var/log/ts-dockerd.log 2>&1 &
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if docker info >/dev/null 2>&1; then
    log "Docker engine is up"
  elif [ "${TS_REQUIRE_DOCKER:-0}" = 1 ]; then
    die "dockerd did not answer within 60 s (see /var/log/ts-dockerd.log); the Docker tests need it"
  else
    log "warning: no Docker engine (see /var/log/ts-dockerd.log); tsc will run nodes as local processes"
  fi
fi
log "ready: redis-server $(redis-server --version | awk '{print $3}'), RabbitMQ on 127.0.0.1:5672, $(docker version --format 'Docker {{.Server.Version}}' 2>/dev/null), $(chromium --version 2>/dev/null | tr -s ' ' | cut -d' ' -f1-2)"
