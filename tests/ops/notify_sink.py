#!/usr/bin/env python3
"""Stands in for systemd's notification socket in the operations tests: binds an AF_UNIX
datagram socket at PATH and appends every sd_notify() message it receives to LOG, one
variable a line (READY=1, STATUS=..., WATCHDOG=1, ...), until it has run for SECONDS. Not a
service manager: it answers nothing and checks nothing; run.sh reads LOG.

usage: notify_sink.py PATH LOG SECONDS
"""

import os
import socket
import sys
import time


def main():
    path, log, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    deadline = time.monotonic() + seconds
    with open(log, "a", buffering=1) as out:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                msg = sock.recv(65536)
            except socket.timeout:
                break
            for line in msg.decode("utf-8", "replace").splitlines():
                out.write(line + "\n")
    sock.close()
    os.unlink(path)


if __name__ == "__main__":
    main()
