#!/usr/bin/env python3
"""Submits one prompt to focusd, prints its progress and writes the images as PNG files.

    python3 example.py [--endpoint ipc:///run/focusd/focusd.sock] "a lighthouse at dawn"
"""

import argparse
import sys

from focusd_client import DEFAULT_ENDPOINT, Client, FocusdError


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt")
    ap.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--count", type=int)
    ap.add_argument("--out", default="focus")
    args = ap.parse_args()
    with Client(args.endpoint) as c:
        info = c.hello()
        print(f"{info['server']} {info['version']}, models: {', '.join(info['models'])}")
        try:
            job = c.submit(args.prompt, seed=args.seed, steps=args.steps, count=args.count,
                           watch=True)
        except FocusdError as e:
            print(f"refused: {e}", file=sys.stderr)
            return 1
        for ev in c.events(job):
            if ev["event"] == "progress":
                print(f"\rstep {ev['step']}/{ev['steps']}, eta {ev['eta']:.1f} s", end="")
            elif ev["event"] == "failed":
                print(f"\njob {job} failed: {ev['error']['message']}", file=sys.stderr)
                return 1
            elif ev["event"] == "canceled":
                print(f"\njob {job} was canceled", file=sys.stderr)
                return 1
            elif ev["event"] == "done":
                print()
                for i in range(ev["images"]):
                    img = c.fetch(job, i)
                    name = f"{args.out}-{job}-{i}.png"
                    with open(name, "wb") as f:
                        f.write(img["png"])
                    print(f"{name}: {img['width']}x{img['height']}, seed {img['seed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
