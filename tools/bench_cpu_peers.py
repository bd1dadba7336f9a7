#!/usr/bin/env python3
"""This engine against diffusers on the same CPU cores (make bench-cpu-peers).

Runs, one process at a time, on the same full-size random-weight model directory
(tools/make_bench_model.py) with the same thread count (the engine's pool takes one thread per
online CPU; the diffusers side calls torch.set_num_threads with that number):
  - one MMDiT forward pass at each side (512x512, 1024x1024): batch 2 (classifier-free
    guidance), 154 text rows (77 CLIP + max_seq 77 T5), random latents, text and pooled
    projections, timestep 1000;
  - one VAE decode of a random 16-channel latent at each side;
  - one T5-XXL encode of 77 token ids;
each in fp32 and bf16. The engine side is build/bench/bench_step and bench_encode; the diffusers
side is this script run with --diffusers PART, which loads the component from the same
directory with torch_dtype float32 or bfloat16 and times exactly that call
(SD3Transformer2DModel.forward, AutoencoderKL.decode, T5EncoderModel.forward). Both sides: a
warm-up pass, then the best of REPEATS.

It also prints the whole step's GFLOP/s. The FLOP count is bench_step's (bench_mmdit_flops in
tests/bench/common/bench_util.h, from the model's config), read from `bench_step --only flops`: two FLOPs per multiply-add of every
linear layer of the forward pass (patch embedding, timestep and pooled embedders, context
embedder, per block the adaLN projections of both streams, q/k/v and output projections, the
feed-forward, the dual-attention blocks' second attention, norm_out and proj_out) at the rows
they see (B x image tokens or B x text rows), plus 4 x B x L^2 x D for each attention's q.k^T and
p.v (L the tokens it attends over); norms, activations and softmax are left out. Each step's
GFLOP/s stands against the GEMM rate of the engine's own kn_linear for 2356x1536x6144
(build/bench/bench_kernels --shape, before and after everything, the better of the two): bf16
steps against the bf16 mode's product (kn_linear in a context of bf16 products), fp32 steps against
cblas_sgemm on all cores.

Memory: one component is loaded at a time, in one process that exits before the next starts.
Before each process the memory it needs (the engine: the component's weight files, which it
maps or packs once, plus activations; diffusers: parameters x 4 or 2 bytes plus activations) is compared with MemAvailable (or --mem-limit GB, whichever is less) and the run
is skipped with "skipped: needs X GB, Y available" when it does not fit.

Output: a line per figure as it comes, "BENCH name precision side value unit" (side: engine,
diffusers or ratio; value "skipped" where it was skipped), the children's own output indented
with "| ", then a table. Ratios are engine time / diffusers time: below 1 the engine is faster.

Needs torch, diffusers and transformers (tools/bench-cpu-peers.sh installs them into
build/peers-venv). Not a test: nothing here passes or fails.

Usage: bench_cpu_peers.py [--build DIR] [--repeats N] [--sizes 512,1024] [--precisions fp32,bf16]
                          [--parts step,vae,t5] [--mem-limit GB] MODEL_DIR
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

BATCH = 2  # classifier-free guidance: negative and positive prompt
TEXT_ROWS = 154  # 77 CLIP rows + max_seq 77 T5 rows
T5_TOKENS = 77
GEMM_SHAPE = (2356, 1536, 6144)  # M x K x N: the feed-forward's first product at 512x512
GB = 1e9

# Activation memory allowed beside the weights, GB at 1024x1024, scaled by the pixels at other
# sides (at least 0.5 GB): transformer steps with blocked attention (SDPA, the engine's), the
# VAE's 128-channel full-resolution activations (several alive at once in an up-block resnet).
# T5 at 77 tokens: 0.5 GB. Checked against the measured peaks (VmHWM) this prints.
ACTIVATIONS_1024 = {"step": 2.5, "vae": 5.0}


def activations(part, sides):
    if part == "t5":
        return 0.5 * GB
    return max(0.5, ACTIVATIONS_1024[part] * max(sides) ** 2 / 1024 ** 2) * GB


SUBFOLDER = {"step": "transformer", "vae": "vae", "t5": "text_encoder_3"}
DTYPE_BYTES = {"fp32": 4, "bf16": 2}

STEP_RE = re.compile(r"^MMDiT step (\d+)x\d+ batch \d+, \d+ text rows: ([0-9.]+) s best")
FLOP_RE = re.compile(r"^\s+(\d+)x\d+: ([0-9.]+) GFLOP per step")
VAE_RE = re.compile(r"^VAE decode (\d+)x\d+: ([0-9.]+) s")
T5_RE = re.compile(r"^T5-XXL encode,\s+(\d+) tokens\s+([0-9.]+) s")
COMPUTE_RE = re.compile(r"(?:compute|encoders compute in) (fp32|bf16|fp16)")
GEMM_RE = {
    "fp32": re.compile(r"^\s+cblas_sgemm\s+([0-9.]+) GFLOP/s"),
    "bf16": re.compile(r"^\s+kn_linear bf16 products\s+([0-9.]+) GFLOP/s"),
}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--build", default="build")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--parts", default="step,vae,t5")
    ap.add_argument("--sides", default="engine,diffusers",
                    help="which side(s) to run (default both)")
    ap.add_argument("--mem-limit", type=float, default=None,
                    help="GB a process may use at most (default: MemAvailable)")
    ap.add_argument("--threads", type=int, default=os.sysconf("SC_NPROCESSORS_ONLN"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--diffusers", choices=("step", "vae", "t5"), help=argparse.SUPPRESS)
    ap.add_argument("--precision", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",")]
    a.precisions = a.precisions.split(",")
    a.parts = a.parts.split(",")
    a.sides = a.sides.split(",")
    for s in a.sides:
        if s not in ("engine", "diffusers"):
            ap.error(f"--sides: {s!r} is not engine or diffusers")
    for s in a.sizes:
        if s < 16 or s % 16:
            ap.error(f"--sizes: {s} is not a positive multiple of 16")
    for p in a.precisions:
        if p not in DTYPE_BYTES:
            ap.error(f"--precisions: {p!r} is not fp32 or bf16")
    for p in a.parts:
        if p not in SUBFOLDER:
            ap.error(f"--parts: {p!r} is not step, vae or t5")
    if a.repeats < 1:
        ap.error("--repeats: at least 1")
    return a


# ---- the diffusers side (a child process) ----

def best_of(torch, repeats, fn):
    """Best wall time of repeats calls after a warm-up call."""
    best = float("inf")
    with torch.inference_mode():
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r > 0:
                best = min(best, dt)
    return best


def run_diffusers(a):
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers

    transformers.logging.disable_progress_bar()

    torch.set_num_threads(a.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.precision]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, compute {a.precision}")
    gen = torch.Generator("cpu").manual_seed(0)

    def rand(*shape):
        return (torch.rand(*shape, generator=gen) * 2 - 1).to(dtype)

    path = os.path.join(a.model, SUBFOLDER[a.diffusers])
    t0 = time.perf_counter()
    if a.diffusers == "step":
        import diffusers

        m = diffusers.SD3Transformer2DModel.from_pretrained(path, torch_dtype=dtype).eval()
        print(f"diffusers {diffusers.__version__}: transformer load {time.perf_counter() - t0:.2f} s")
        c = m.config
        for side in a.sizes:
            lat = side // 8
            x = rand(BATCH, c.in_channels, lat, lat)
            text = rand(BATCH, TEXT_ROWS, c.joint_attention_dim)
            pooled = rand(BATCH, c.pooled_projection_dim)
            t = torch.full((BATCH,), 1000.0, dtype=dtype)
            best = best_of(torch, a.repeats, lambda: m(
                hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled,
                timestep=t, return_dict=False))
            print(f"MMDiT step {side}x{side} batch {BATCH}, {TEXT_ROWS} text rows: "
                  f"{best:.2f} s best of {a.repeats}", flush=True)
    elif a.diffusers == "vae":
        import diffusers

        # low_cpu_mem_usage=False: a decoder-only file (no encoder tensors) then loads with the
        # encoder left at its initialisation, which decode never touches; the warning that lists
        # every encoder tensor is silenced.
        diffusers.utils.logging.set_verbosity_error()
        m = diffusers.AutoencoderKL.from_pretrained(path, torch_dtype=dtype,
                                                    low_cpu_mem_usage=False).eval()
        print(f"diffusers {diffusers.__version__}: VAE load {time.perf_counter() - t0:.2f} s")
        scale = 2 ** (len(m.config.block_out_channels) - 1)
        for side in a.sizes:
            z = rand(1, m.config.latent_channels, side // scale, side // scale)
            best = best_of(torch, a.repeats, lambda: m.decode(z, return_dict=False))
            print(f"VAE decode {side}x{side}: {best:.2f} s (best of {a.repeats} after a warm-up)",
                  flush=True)
    else:
        m = transformers.T5EncoderModel.from_pretrained(path, dtype=dtype).eval()
        print(f"transformers {transformers.__version__}: T5 load {time.perf_counter() - t0:.2f} s")
        # bench_encode's ids (fill_ids with a vocabulary of 2000).
        ids = [(i * 7919 + 13) % 1998 for i in range(T5_TOKENS)]
        ids[-1] = 1999
        ids = torch.tensor([ids], dtype=torch.long)
        best = best_of(torch, a.repeats, lambda: m(input_ids=ids))
        print(f"T5-XXL encode, {T5_TOKENS:3d} tokens  {best:8.3f} s  (best of {a.repeats})")


# ---- the driver ----

def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def component_weights(model, part):
    """(elements, bytes) of the safetensors files of a component, from their headers."""
    d = os.path.join(model, SUBFOLDER[part])
    numel = size = 0
    for name in sorted(os.listdir(d)):
        if not name.endswith(".safetensors"):
            continue
        p = os.path.join(d, name)
        size += os.path.getsize(p)
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                e = 1
                for s in v["shape"]:
                    e *= s
                numel += e
    return numel, size


class Driver:
    def __init__(self, a):
        self.a = a
        self.results = {}  # (name, precision, side) -> value
        self.rss = {}  # (part, precision, side) -> peak RSS bytes

    def emit(self, name, precision, side, value, unit):
        self.results[(name, precision, side)] = value
        v = "skipped" if value is None else f"{value:.3f}"
        print(f"BENCH {name} {precision} {side} {v} {unit}", flush=True)

    def limit(self):
        avail = mem_available()
        if self.a.mem_limit is not None:
            avail = min(avail, self.a.mem_limit * GB)
        return avail

    def run_child(self, argv, key):
        """Runs one benchmark process, echoing its output; returns its lines (None on failure)."""
        print(f"$ {' '.join(argv)}", flush=True)
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1)
        lines = []
        for line in p.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            print(f"  | {line}", flush=True)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if key:
            self.rss[key] = usage.ru_maxrss * 1024
        if p.returncode != 0:
            print(f"  {argv[0]} failed with status {p.returncode}", flush=True)
            return None
        return lines

    def fits(self, need):
        avail = self.limit()
        if need > avail:
            print(f"  skipped: needs {need / GB:.1f} GB, {avail / GB:.1f} available", flush=True)
            return False
        return True

    def gemm_rates(self):
        """The engine's kn_linear GEMM rates (fp32: sgemm, bf16: the bf16 mode's product)."""
        m, k, n = GEMM_SHAPE
        lines = self.run_child([os.path.join(self.a.build, "bench", "bench_kernels"),
                                str(max(self.a.repeats, 3)), "--shape", f"{m}x{k}x{n}"], None)
        rates = {}
        for line in lines or []:
            for prec, rx in GEMM_RE.items():
                if rx.match(line):
                    rates[prec] = float(rx.match(line).group(1))
        return rates

    def record_flops(self):
        """The step's FLOP count at each side, as bench_step counts it (nothing is run)."""
        lines = self.run_child([os.path.join(self.a.build, "bench", "bench_step"), self.a.model,
                                "--sizes", ",".join(map(str, self.a.sizes)), "--only", "flops"],
                               None)
        for line in lines or []:
            m = FLOP_RE.match(line)
            if m:
                self.results[("flop", int(m.group(1)))] = float(m.group(2)) * 1e9

    def engine(self, part, prec):
        numel, size = component_weights(self.a.model, part)
        sides = self.a.sizes if part != "t5" else [T5_TOKENS]
        need = size + activations(part, sides)
        print(f"engine {part} {prec}:", flush=True)
        if not self.fits(need):
            return None
        b = os.path.join(self.a.build, "bench")
        if part == "t5":
            argv = [os.path.join(b, "bench_encode"), self.a.model, "--only", "t5", "--tokens",
                    str(T5_TOKENS), "--repeats", str(self.a.repeats), "--precision", prec]
        else:
            argv = [os.path.join(b, "bench_step"), self.a.model, str(self.a.repeats),
                    "--precision", prec, "--sizes", ",".join(map(str, sides)), "--only", part]
        return self.run_child(argv, (part, prec, "engine"))

    def diffusers(self, part, prec):
        numel, _ = component_weights(self.a.model, part)
        sides = self.a.sizes if part != "t5" else [T5_TOKENS]
        need = numel * DTYPE_BYTES[prec] + activations(part, sides)
        print(f"diffusers {part} {prec}:", flush=True)
        if not self.fits(need):
            return None
        argv = [sys.executable, os.path.abspath(__file__), self.a.model, "--diffusers", part,
                "--precision", prec, "--repeats", str(self.a.repeats), "--threads",
                str(self.a.threads), "--sizes", ",".join(map(str, self.a.sizes))]
        return self.run_child(argv, (part, prec, "diffusers"))

    def record(self, part, prec, side, lines):
        rx = {"step": STEP_RE, "vae": VAE_RE, "t5": T5_RE}[part]
        name = {"step": "mmdit_step", "vae": "vae_decode", "t5": "t5_encode"}[part]
        sides = self.a.sizes if part != "t5" else [T5_TOKENS]
        found = {}
        for line in lines or []:
            m = rx.match(line)
            if m:
                found[int(m.group(1))] = float(m.group(2))
            m = COMPUTE_RE.search(line)
            if m and side == "engine":
                self.results[("compute", part, prec)] = m.group(1)
        for s in sides:
            self.emit(f"{name}_{s}", prec, side, found.get(s), "s")
        if (part, prec, side) in self.rss:
            self.emit(f"peak_rss_{part}", prec, side, self.rss[(part, prec, side)] / GB, "GB")

    def run(self):
        a = self.a
        print(f"model {a.model}; {a.threads} threads on both sides (the engine: one per online "
              f"CPU; diffusers: torch.set_num_threads({a.threads})); best of {a.repeats} after "
              f"a warm-up; memory limit {self.limit() / GB:.1f} GB", flush=True)
        # The GEMM rate serves only the steps' figures.
        measure_gemm = "step" in a.parts
        rates = self.gemm_rates() if measure_gemm else {}
        if "step" in a.parts:
            self.record_flops()
        for part in ("step", "vae", "t5"):
            if part not in a.parts:
                continue
            for prec in a.precisions:
                if "engine" in a.sides:
                    self.record(part, prec, "engine", self.engine(part, prec))
                if "diffusers" in a.sides:
                    self.record(part, prec, "diffusers", self.diffusers(part, prec))
        if measure_gemm:
            again = self.gemm_rates()
            m, k, n = GEMM_SHAPE
            for prec in a.precisions:
                best = max(rates.get(prec, 0), again.get(prec, 0)) or None
                self.emit(f"gemm_{m}x{k}x{n}", prec, "engine", best, "GFLOP/s")
        self.ratios()
        self.table()

    def ratios(self):
        keys = sorted({(k[0], k[1]) for k in self.results
                       if len(k) == 3 and k[2] in ("engine", "diffusers")
                       and not k[0].startswith(("peak_rss", "gemm"))})
        for name, prec in keys:
            v, d = (self.results.get((name, prec, s)) for s in ("engine", "diffusers"))
            self.emit(name, prec, "ratio", v / d if v and d else None, "engine/diffusers")
            if name.startswith("mmdit_step_"):
                flop = self.results.get(("flop", int(name.rsplit("_", 1)[1])))
                for s in ("engine", "diffusers"):
                    t = self.results.get((name, prec, s))
                    self.emit(name + "_gflops", prec, s, flop / t * 1e-9 if flop and t else None,
                              "GFLOP/s")

    def table(self):
        r = self.results
        m, k, n = GEMM_SHAPE

        def fmt(v, unit=""):
            return "skipped" if v is None else f"{v:.3g}{unit}"

        print()
        print(f"{'':30} {'':9} {'engine':>10} {'diffusers':>10} {'engine/diffusers':>17}")
        rows = [("step", f"mmdit_step_{s}", f"MMDiT step {s}x{s}") for s in self.a.sizes]
        rows += [("vae", f"vae_decode_{s}", f"VAE decode {s}x{s}") for s in self.a.sizes]
        rows += [("t5", f"t5_encode_{T5_TOKENS}", f"T5-XXL encode, {T5_TOKENS} tokens")]
        for part, key, label in rows:
            for prec in self.a.precisions:
                if not any((key, prec, s) in r for s in ("engine", "diffusers")):
                    continue
                q = r.get((key, prec, "ratio"))
                shown = {s: fmt(r[(key, prec, s)], " s") if (key, prec, s) in r else "-"
                         for s in ("engine", "diffusers")}
                comp = r.get(("compute", part, prec))
                note = f"  (engine computes in {comp})" if comp and comp != prec else ""
                ratio = "-" if q is None else f"{q:.2f}"
                print(f"{label:30} {prec:9} {shown['engine']:>10} {shown['diffusers']:>10} "
                      f"{ratio:>17}{note}")
        print()
        for prec in self.a.precisions if "step" in self.a.parts else ():
            gemm = r.get((f"gemm_{m}x{k}x{n}", prec, "engine"))
            what = "cblas_sgemm" if prec == "fp32" else "kn_linear, bf16 products"
            print(f"{prec} GEMM {m}x{k}x{n} ({what}): {fmt(gemm, ' GFLOP/s')}")
            for s in self.a.sizes:
                parts = []
                for side in self.a.sides:
                    g = r.get((f"mmdit_step_{s}_gflops", prec, side))
                    pct = f" = {100 * g / gemm:.0f}% of it" if g and gemm else ""
                    parts.append(f"{side} {fmt(g, ' GFLOP/s')}{pct}")
                flop = r.get(("flop", s))
                count = "not counted" if flop is None else f"{flop * 1e-9:.1f} GFLOP"
                print(f"  whole {prec} step {s}x{s} ({count}): " + ", ".join(parts))
        rss = [f"{part} {prec} {side} {v / GB:.1f} GB" for (part, prec, side), v in self.rss.items()]
        if rss:
            print("peak RSS per process: " + "; ".join(rss))
        print("ratios: engine time / diffusers time (below 1: the engine is faster)")


def main():
    a = parse_args()
    if a.diffusers:
        if not a.precision:
            sys.exit("--diffusers needs --precision")
        run_diffusers(a)
    else:
        Driver(a).run()


if __name__ == "__main__":
    main()
