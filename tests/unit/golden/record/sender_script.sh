#!/bin/sh
# After the sessions are up, withdraw one route, then stay until ExaBGP stops.
sleep 4
echo "neighbor 10.99.0.1 withdraw route 10.244.3.64/26"
sleep 3600
