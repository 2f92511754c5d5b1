#!/bin/sh
# Debian builds Redis with protected mode on: it would refuse every client on the network.
if [ "$1" = redis-server ]; then
  shift
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server "$@" --protected-mode no
fi
exec "$@"
