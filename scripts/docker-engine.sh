#!/usr/bin/env bash
# Makes a Docker engine available to the distro suite, and stops only what
# it started.
#
#   eval "$(scripts/docker-engine.sh start)"   # exports DOCKER_HOST
#   scripts/docker-engine.sh stop
#
# `start` uses an engine that already answers (DOCKER_HOST, or the default
# socket); otherwise it starts Debian's dockerd on a private socket with
# --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false
# --bridge=none, so it never writes the host's firewall nor turns the host
# into a router (dockerd sets net.ipv4.ip_forward=1 unless told not to;
# the test containers bring their own network namespaces), and waits
# until the socket answers. It prints the `export DOCKER_HOST=...` line
# to evaluate.
set -euo pipefail

STATE=/run/portmap-test-docker
SOCK="unix://$STATE/docker.sock"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"
WAIT_SECONDS=60

answers() { DOCKER_HOST="$1" docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
  if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then
    echo "export DOCKER_HOST=$DOCKER_HOST"
    return
  fi
  if answers unix:///var/run/docker.sock; then
    echo "export DOCKER_HOST=unix:///var/run/docker.sock"
    return
  fi
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && answers "$SOCK"; then
    echo "export DOCKER_HOST=$SOCK"
    return
  fi
  command -v dockerd >/dev/null || { echo "docker-engine: dockerd not found (run scripts/install-deps.sh)" >&2; exit 1; }
  if [ "$(id -u)" -ne 0 ]; then
    echo "docker-engine: no engine answers, and starting dockerd needs root: run it as root, or: sudo $0 start" >&2
    exit 1
  fi
  mkdir -p "$STATE"
  echo "docker-engine: starting dockerd on $SOCK (log: $LOG)" >&2
  # setsid: the engine outlives this script but not `stop`.
  setsid dockerd \
    --host "$SOCK" \
    --data-root /var/lib/portmap-test-docker \
    --exec-root "$STATE/exec" \
    --pidfile "$PIDFILE" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
    >"$LOG" 2>&1 </dev/null &
  local deadline=$((SECONDS + WAIT_SECONDS))
  until answers "$SOCK"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "docker-engine: dockerd did not answer within ${WAIT_SECONDS}s; its log:" >&2
      tail -20 "$LOG" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "export DOCKER_HOST=$SOCK"
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  local pid
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$PIDFILE"
  echo "docker-engine: stopped the dockerd this script started" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
