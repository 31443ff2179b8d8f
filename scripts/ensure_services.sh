#!/usr/bin/env bash
# Make sure a Redis answers at RAGFLEET_REDIS_URL's host:port (default 127.0.0.1:6379); start one if
# none does. With --promtool, also make sure Prometheus' promtool is installed (alert-rule tests); with
# --tesseract, the Tesseract OCR binary and its English data (document parsing, docs/parsing.md).
set -euo pipefail
HOST=127.0.0.1
PORT="${RAGFLEET_REDIS_PORT:-6379}"
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"

apt_install() {
  $SUDO apt-get install -y -q "$@" >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q "$@" >/dev/null; }
}

ping_redis() { (exec 3<>/dev/tcp/$HOST/$PORT && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null; }

if ! ping_redis; then
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p var
  redis-server --daemonize yes --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no \
    --dir "$(pwd)/var" --logfile "$(pwd)/var/redis.log"
  for _ in $(seq 50); do ping_redis && break; sleep 0.1; done
  ping_redis || { echo "could not start redis-server on $PORT" >&2; exit 1; }
  echo "started redis-server on $HOST:$PORT"
fi
if [[ " $* " == *" --promtool "* ]] && ! command -v promtool >/dev/null; then
  apt_install prometheus || echo "warning: could not install prometheus (promtool)" >&2
fi
if [[ " $* " == *" --tesseract "* ]] && ! command -v tesseract >/dev/null; then
  apt_install tesseract-ocr tesseract-ocr-eng || echo "warning: could not install tesseract-ocr" >&2
fi
