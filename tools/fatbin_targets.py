#!/usr/bin/env python3
"""Lists the GPU targets a program's embedded CUDA fat binaries hold, for tools/gpu-check.sh
pack on a build machine without cuobjdump: one word per target, sorted, e.g.
"ptx_90 sm_80 sm_89 sm_90a".

A fat binary starts with the magic 0xBA55ED50, a 16-bit version, a 16-bit header size and a
64-bit payload size; each entry has a 16-bit kind (1 PTX, 2 machine code), a 32-bit header size
and a 64-bit payload size at offsets 0, 4 and 8, and its 32-bit SM number at offset 28 (the
layout CUDA's fatbinary.h and cuobjdump agree on). Arch-specific machine code (sm_90a) is told
apart from sm_90 by the ptxas command line nvcc stores in each cubin ("-arch sm_90a").

Usage: fatbin_targets.py PROGRAM"""
import re
import struct
import sys

MAGIC = struct.pack("<I", 0xBA55ED50)


def targets(data):
    found = set()
    start = data.find(MAGIC)
    while start >= 0:
        _, header, size = struct.unpack_from("<HHQ", data, start + 4)
        p, end = start + header, start + header + size
        while p < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, p)
            sm = struct.unpack_from("<I", data, p + 28)[0]
            found.add(("ptx_%d" if kind == 1 else "sm_%d") % sm)
            p += entry_header + payload
        start = data.find(MAGIC, end)
    for arch in set(re.findall(rb"-arch (sm_\d+a)\b", data)):
        found.discard(arch.decode()[:-1])
        found.add(arch.decode())
    return sorted(found)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("Usage: ")[1])
    with open(sys.argv[1], "rb") as f:
        print(" ".join(targets(f.read())))
