#!/bin/sh
# The example application: every 2 s it prints the file cairn0 renders and
# what cairn0's DNS answers for the service cairn0 registers. It shares
# cairn0's network namespace, so cairn0's DNS is on 127.0.0.1.
while :; do
    echo "--- /srv/rendered/app.conf"
    cat /srv/rendered/app.conf 2>&1
    echo "--- web.skydns.local. SRV and A from the agent's DNS"
    dig @127.0.0.1 -p 8053 +short +tries=1 +time=1 web.skydns.local. SRV 2>&1
    dig @127.0.0.1 -p 8053 +short +tries=1 +time=1 web.skydns.local. A 2>&1
    sleep 2
done
