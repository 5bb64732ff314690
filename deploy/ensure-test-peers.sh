#!/usr/bin/env bash
# Install and start what the tests need, only where it is missing:
# dcmtk (storescu, echoscu, storescp), dicom3tools (dciodvfy), Orthanc + DICOMweb (apt),
# and a Redis answering on 127.0.0.1:6379.
set -euo pipefail

need=()
command -v storescu >/dev/null || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${need[@]}" >/dev/null
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  echo "starting a Redis on 127.0.0.1:6379"
  mkdir -p /tmp/thyroid-node-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/thyroid-node-redis --logfile /tmp/thyroid-node-redis/redis.log
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && break
    sleep 0.2
  done
  redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG
fi
echo "test peers ready: $(storescu --version 2>&1 | head -n1), Orthanc $(/usr/sbin/Orthanc --version 2>&1 | head -n1), Redis $(redis-cli -h 127.0.0.1 -p 6379 info server | grep redis_version)"
