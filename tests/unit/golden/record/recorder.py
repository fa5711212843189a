"""ExaBGP API process used once to RECORD real events (see record_events.sh).

Writes every line ExaBGP sends to $REC_OUT and, once the sessions are up, sends a
scripted sequence of commands so their answers (done/error) are recorded too.
"""

import os
import select
import sys
import time

out = open(os.environ.get("REC_OUT", "/tmp/recorded.jsonl"), "a", buffering=1)  # noqa: SIM115
COMMANDS = [
    "neighbor 10.99.0.2 announce route 10.244.9.0/26 next-hop 10.99.0.1 origin igp "
    "as-path [ 65010 ] local-preference 200 med 10 community [ 65000:100 ] "
    "large-community [ 65000:1:2 ]",
    "neighbor 6.6.6.6 announce route 10.244.9.64/26 next-hop 10.99.0.1",
    "neighbor 10.99.0.2 announce attributes next-hop 10.99.0.1 as-path [ ] "
    "nlri 10.244.10.0/26 10.244.10.64/26",
    "neighbor 10.99.0.2 withdraw route 10.244.9.0/26",
]
ups = 0
sent = False
start = time.monotonic()
buf = b""
while True:
    r, _, _ = select.select([0], [], [], 0.5)
    if r:
        data = os.read(0, 65536)
        if not data:
            break
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode()
            out.write(text + "\n")
            if '"state": "up"' in text or '"state":"up"' in text:
                ups += 1
    if not sent and (ups >= 3 or time.monotonic() - start > 5):
        sent = True
        time.sleep(1.5)
        for cmd in COMMANDS:
            sys.stdout.write(cmd + "\n")
            sys.stdout.flush()
            time.sleep(0.3)
