#!/usr/bin/env python3
"""The diffusers side of the GPU benchmark (tools/bench-gpu.sh runs it beside build/bench/bench_gpu).

Loads the same pipeline directory with diffusers' StableDiffusion3Pipeline in BF16 with its
default attention (PyTorch's scaled_dot_product_attention) and measures what bench_gpu measures:
  - one transformer forward pass at batch 2 (classifier-free guidance) with 154 text rows
    (77 CLIP + max_sequence_length 77 T5), random inputs: warm-up, then the median of N passes,
    each timed by the host clock between torch.cuda.synchronize() calls;
  - one image end to end (prompt encoding, the steps with guidance 4.5, VAE decode, output_type
    "np"), a new prompt each run; median of the runs after a short warm-up call;
  - throughput: one call with num_images_per_prompt=8 at the first side; images per second.
Lines starting with "BENCH " carry the figures under the names bench_gpu uses; bench-gpu.sh
derives this side's TFLOP/s from bench_gpu's FLOP count, so the count lives in one place.
Without CUDA it prints "skipped: no usable CUDA device (...)" and exits 0; --device cpu runs
on the CPU to check the script on a small model (its figures say nothing about a GPU).

Needs torch, diffusers 0.31.0 and transformers 4.46.3 (tests/gpu/README.md: carrying them to a
machine without network). Not a test: nothing here passes or fails.

Usage: bench_gpu_baseline.py MODEL_DIR [--sizes 512,1024] [--repeats 10] [--runs 3]
       [--steps 28] [--jobs 8] [--device cuda|cpu] [--dtype bf16|fp32]
"""
import argparse
import statistics
import sys
import time

TEXT_ROWS = 154  # 77 CLIP rows + max_sequence_length 77 T5 rows
MAX_SEQ = 77
GUIDANCE = 4.5
WARMUP_STEPS = 2


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    a = ap.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",")]
    return a


class Timer:
    """Wall time of a block, with the device drained before and after."""

    def __init__(self, torch, device):
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def __enter__(self):
        self.sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.t0


def bench_steps(torch, pipe, a, dtype):
    tr = pipe.transformer
    c = tr.config
    gen = torch.Generator("cpu").manual_seed(0)
    for side in a.sizes:
        lat = side // 8

        def rand(*shape):
            return torch.rand(*shape, generator=gen).mul_(2).sub_(1).to(a.device, dtype)

        x = rand(2, c.in_channels, lat, lat)
        text = rand(2, TEXT_ROWS, c.joint_attention_dim)
        pooled = rand(2, c.pooled_projection_dim)
        t = torch.full((2,), 1000.0, device=a.device, dtype=dtype)
        times = []
        with torch.inference_mode():
            for r in range(a.repeats + 1):  # the first pass warms up
                with Timer(torch, a.device) as tm:
                    tr(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled,
                       timestep=t, return_dict=False)
                if r > 0:
                    times.append(tm.seconds)
        med = statistics.median(times)
        print(f"transformer step {side}x{side}, batch 2, {TEXT_ROWS} text rows: "
              f"{med * 1e3:.1f} ms median of {a.repeats} (best {min(times) * 1e3:.1f})")
        print(f"BENCH step_ms_{side} {med * 1e3:.3f}", flush=True)
        del x, text, pooled, t


def generate(torch, pipe, a, side, steps, serial, count=1):
    return pipe(prompt=f"a lighthouse on a cliff at dawn, study number {serial}",
                negative_prompt="", num_inference_steps=steps, guidance_scale=GUIDANCE,
                height=side, width=side, max_sequence_length=MAX_SEQ,
                num_images_per_prompt=count,
                generator=torch.Generator("cpu").manual_seed(serial), output_type="np")


def bench_images(torch, pipe, a):
    serial = 0
    for side in a.sizes:
        generate(torch, pipe, a, side, WARMUP_STEPS, serial)
        serial += 1
        times = []
        for _ in range(a.runs):
            with Timer(torch, a.device) as tm:
                generate(torch, pipe, a, side, a.steps, serial)
            serial += 1
            times.append(tm.seconds)
        med = statistics.median(times)
        print(f"image {side}x{side}, {a.steps} steps, guidance {GUIDANCE}: "
              f"{med:.2f} s median of {a.runs}")
        print(f"BENCH image_s_{side} {med:.4f}", flush=True)


def bench_throughput(torch, pipe, a):
    side = a.sizes[0]
    with Timer(torch, a.device) as tm:
        generate(torch, pipe, a, side, a.steps, 1000, count=a.jobs)
    rate = a.jobs / tm.seconds
    print(f"throughput: num_images_per_prompt={a.jobs} at {side}x{side}, {a.steps} steps: "
          f"{tm.seconds:.2f} s = {rate:.3f} images/s")
    print(f"BENCH images_per_s_{side}x{a.jobs} {rate:.5f}", flush=True)


def main():
    a = parse_args()
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu_baseline: skipped: no usable CUDA device "
              "(torch.cuda.is_available() is False)")
        return 0
    import diffusers
    import transformers
    from diffusers import StableDiffusion3Pipeline

    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    name = torch.cuda.get_device_name(0) if a.device == "cuda" else "CPU (--device cpu)"
    print(f"bench_gpu_baseline: {name}; torch {torch.__version__}, diffusers "
          f"{diffusers.__version__}, transformers {transformers.__version__}; model {a.model}")
    print(f"precision: {a.dtype} weights and activations, default attention "
          f"(scaled_dot_product_attention), TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} "
          f"for float32 matmuls")
    t0 = time.perf_counter()
    pipe = StableDiffusion3Pipeline.from_pretrained(a.model, torch_dtype=dtype,
                                                    local_files_only=True).to(a.device)
    pipe.set_progress_bar_config(disable=True)
    print(f"pipeline load: {time.perf_counter() - t0:.2f} s", flush=True)
    bench_steps(torch, pipe, a, dtype)
    bench_images(torch, pipe, a)
    bench_throughput(torch, pipe, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
