"""Compute the golden outputs under tests/fixtures/golden/ from the tiny fixture pipeline.

Usage: gen_goldens.py [part ...] with parts tokenizer, encode, scheduler, randn, components, pipeline
(default: all).  The pipeline is loaded back from tests/fixtures/tiny-sd35 in float32, exactly as a
user would load it.  Not for building the fixture model (gen_model.py).
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

import tokenizer_cases

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-sd35")
GOLD = os.path.join(ROOT, "tests", "fixtures", "golden")

LONG = tokenizer_cases.LONG + ", " + tokenizer_cases.LONG.upper() + ", " + tokenizer_cases.LONG


def f32(x):
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def save(dirpath, name, arr):
    os.makedirs(dirpath, exist_ok=True)
    np.save(os.path.join(dirpath, name), arr, allow_pickle=False)


def write_json(path, obj, one_per_line=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if one_per_line:  # a list, one element per line, for readable diffs
            f.write("[\n" + ",\n".join(json.dumps(o, ensure_ascii=True, separators=(",", ":")) for o in obj) + "\n]\n")
        else:
            json.dump(obj, f, indent=1, ensure_ascii=True)
            f.write("\n")


def fresh(sub):
    d = os.path.join(GOLD, sub)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def load_pipe():
    return StableDiffusion3Pipeline.from_pretrained(MODEL, torch_dtype=torch.float32)


def clip_ids(tok, text):
    return tok(text, padding="max_length", max_length=77, truncation=True).input_ids


def t5_ids(tok, text, n=256):
    return tok(text, padding="max_length", max_length=n, truncation=True, add_special_tokens=True).input_ids


def gen_tokenizer(pipe):
    d = fresh("tokenizer")
    out = []
    for text in tokenizer_cases.cases():
        case = {"text": text, "clip_l": clip_ids(pipe.tokenizer, text), "clip_g": clip_ids(pipe.tokenizer_2, text),
                "t5": t5_ids(pipe.tokenizer_3, text)}
        assert len(case["clip_l"]) == 77 and len(case["clip_g"]) == 77 and len(case["t5"]) == 256
        out.append(case)
    write_json(os.path.join(d, "cases.json"), out, one_per_line=True)
    return len(out)


ENCODE_CASES = [
    {"name": "simple", "prompt": "a photo of a cat", "negative_prompt": "", "max_sequence_length": 256},
    {"name": "empty", "prompt": "", "negative_prompt": "", "max_sequence_length": 256},
    {"name": "negative", "prompt": "A beautiful landscape painting, golden hour!",
     "negative_prompt": "blurry, low quality, watermark", "max_sequence_length": 256},
    {"name": "long", "prompt": LONG, "negative_prompt": "", "max_sequence_length": 256},
    {"name": "unicode", "prompt": "東京の夜景, café naïve Ｆｕｌｌ 😀👍🏽 Привет мир — it's ǂ\u00a0done",
     "negative_prompt": "ugly, 醜い", "max_sequence_length": 256},
    {"name": "msl77", "prompt": "a cinematic portrait of an old wizard, highly detailed", "negative_prompt": "",
     "max_sequence_length": 77},
    {"name": "msl77_long", "prompt": LONG, "negative_prompt": "cartoon", "max_sequence_length": 77},
]


@torch.no_grad()
def gen_encode(pipe, cases=None, sub="encode"):
    """encode_prompt goldens of cases (ENCODE_CASES) into golden/<sub>/; gen_real_model.py
    calls it for the published tokenizers."""
    d = fresh(sub)
    listing = []
    for c in cases or ENCODE_CASES:
        cd = os.path.join(d, c["name"])
        pe, npe, pp, npp = pipe.encode_prompt(prompt=c["prompt"], prompt_2=None, prompt_3=None, device="cpu",
                                              num_images_per_prompt=1, do_classifier_free_guidance=True,
                                              negative_prompt=c["negative_prompt"],
                                              max_sequence_length=c["max_sequence_length"])
        for name, t in (("prompt_embeds", pe), ("negative_prompt_embeds", npe), ("pooled_prompt_embeds", pp),
                        ("negative_pooled_prompt_embeds", npp)):
            save(cd, name + ".npy", f32(t))
        ids = {}
        parts = {}
        for key, tok, enc in (("clip_l", pipe.tokenizer, pipe.text_encoder),
                              ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)):
            ids[key] = clip_ids(tok, c["prompt"])
            o = enc(torch.tensor([ids[key]]), output_hidden_states=True)
            parts[key] = (o.hidden_states[-2], o.text_embeds)
            save(cd, key + "_hidden.npy", f32(o.hidden_states[-2]))
            save(cd, key + "_pooled.npy", f32(o.text_embeds))
        ids["t5"] = t5_ids(pipe.tokenizer_3, c["prompt"], c["max_sequence_length"])
        t5 = pipe.text_encoder_3(torch.tensor([ids["t5"]]))[0]
        save(cd, "t5_hidden.npy", f32(t5))
        # The per-encoder outputs must be exactly the slices encode_prompt assembles.
        clip = torch.cat([parts["clip_l"][0], parts["clip_g"][0]], dim=-1)
        w = clip.shape[-1]
        assert torch.equal(pe[:, :77, :w], clip) and torch.all(pe[:, :77, w:] == 0)
        assert torch.equal(pe[:, 77:], t5)
        assert torch.equal(pp, torch.cat([parts["clip_l"][1], parts["clip_g"][1]], dim=-1))
        listing.append({**c, "prompt_2": None, "prompt_3": None, "num_images_per_prompt": 1,
                        "do_classifier_free_guidance": True, "ids": ids,
                        "shapes": {"prompt_embeds": list(pe.shape), "pooled_prompt_embeds": list(pp.shape)}})
    write_json(os.path.join(d, "cases.json"), listing)
    return len(listing)


def calculate_shift(seq_len, base_seq_len, max_seq_len, base_shift, max_shift):
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * m + (base_shift - m * base_seq_len)


def sched_entry(s, n, **extra):
    s.set_timesteps(n, **extra)
    return {"num_inference_steps": n, **extra,
            "sigmas": [float(x) for x in s.sigmas.numpy()], "timesteps": [float(x) for x in s.timesteps.numpy()]}


def gen_scheduler(_pipe):
    s = FlowMatchEulerDiscreteScheduler.from_pretrained(MODEL, subfolder="scheduler")
    assert s.timesteps.dtype == torch.float32 and s.sigmas.dtype == torch.float32
    static = [sched_entry(s, n) for n in (1, 2, 3, 4, 10, 28, 40, 50)]
    dyn = FlowMatchEulerDiscreteScheduler.from_config(s.config, use_dynamic_shifting=True)
    cfg = dyn.config
    dynamic = []
    for w, h in ((1024, 1024), (768, 512)):
        seq = (h // 8 // 2) * (w // 8 // 2)
        mu = calculate_shift(seq, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift)
        for n in (4, 28):
            dynamic.append({"width": w, "height": h, "image_seq_len": seq, **sched_entry(dyn, n, mu=mu)})
    obj = {
        "config": {k: v for k, v in s.config.items() if not k.startswith("_")},
        "note": "sigmas has num_inference_steps+1 entries (final 0.0); timesteps = float32(sigma*1000). "
                "Values are the float32 results written as Python floats (exact).",
        "static": static,
        "dynamic_shifting": {
            "mu_formula": "mu = image_seq_len*m + (base_shift - m*base_image_seq_len), "
                          "m = (max_shift-base_shift)/(max_image_seq_len-base_image_seq_len), "
                          "image_seq_len = (height//8//2)*(width//8//2), Python float64 math, "
                          "with the scheduler config values base_shift 0.5, max_shift 1.15, "
                          "base_image_seq_len 256, max_image_seq_len 4096. diffusers 0.31's "
                          "StableDiffusion3Pipeline does not pass mu (set_timesteps raises); "
                          "this is FluxPipeline's calculate_shift.",
            "sigma_formula": "sigma' = exp(mu) / (exp(mu) + (1/sigma - 1)**1.0) on the unshifted float64 "
                             "linspace sigmas, then float32",
            "cases": dynamic,
        },
    }
    write_json(os.path.join(GOLD, "scheduler.json"), obj)
    return len(static) + len(dynamic)


def gen_randn(_pipe):
    d = fresh("randn")
    index = []

    def draw(name, shape, seed, dtype=torch.float32, part=None, note=None):
        g = torch.Generator("cpu").manual_seed(seed)
        x = torch.randn(shape, generator=g, dtype=dtype).float().numpy().reshape(-1)
        stored = "full"
        if part:
            x = np.concatenate([x[:part], x[-part:]])
            stored = f"first {part} then last {part} values of the flattened tensor"
        save(d, name + ".npy", f32(x) if stored != "full" else f32(x).reshape(shape))
        e = {"file": name + ".npy", "shape": list(shape), "seed": seed, "dtype": str(dtype).replace("torch.", ""),
             "stored": stored}
        if note:
            e["note"] = note
        index.append(e)

    draw("f32_1x16x32x32_seed0", (1, 16, 32, 32), 0)
    draw("f32_1x16x32x32_seed42", (1, 16, 32, 32), 42)
    draw("f32_1x16x32x32_seed4294967303", (1, 16, 32, 32), 2**32 + 7,
         note="seed 2**32+7; CPU mt19937 uses the low 32 bits only, so this equals seed 7")
    draw("f32_2x16x24x40_seed123", (2, 16, 24, 40), 123)
    draw("f32_1x16x128x128_seed42_ends", (1, 16, 128, 128), 42, part=64)
    draw("f32_2x3_seed42", (2, 3), 42, note="numel < 16: double path")
    draw("f32_5_seed42", (5,), 42, note="numel < 16: double path")
    draw("f32_1x100_seed42", (1, 100), 42, note="numel not a multiple of 16")
    draw("f32_3x7x5_seed42", (3, 7, 5), 42, note="numel not a multiple of 16")
    draw("f16_1x16x32x32_seed42", (1, 16, 32, 32), 42, dtype=torch.float16, note="exact fp16 values stored as float32")
    draw("bf16_1x16x32x32_seed42", (1, 16, 32, 32), 42, dtype=torch.bfloat16,
         note="exact bf16 values stored as float32")
    draw("f32_2x16x16x16_seed7_two_images", (2, 16, 16, 16), 7,
         note="num_images_per_prompt=2 at 128x128: one generator, one draw of shape (2,16,16,16)")
    seven = np.load(os.path.join(d, "f32_1x16x32x32_seed4294967303.npy"))
    g = torch.Generator("cpu").manual_seed(7)
    assert np.array_equal(seven, torch.randn((1, 16, 32, 32), generator=g).numpy())
    write_json(os.path.join(d, "index.json"), {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                               "generator": "torch.Generator('cpu').manual_seed(seed); "
                                                            "torch.randn(shape, generator=g, dtype=dtype)",
                                               "draws": index})
    return len(index)


def normal(seed, shape, scale=1.0):
    return f32(np.random.Generator(np.random.PCG64(seed)).standard_normal(shape) * scale)


@torch.no_grad()
def gen_components(pipe):
    d = fresh("components")
    tr = pipe.transformer
    for sub, shape, ts, seed in (("transformer", (2, 16, 32, 32), [1000.0, 500.5], 11),
                                 ("transformer_24x40", (1, 16, 24, 40), [250.0], 12)):
        b = shape[0]
        x = normal(seed, shape)
        ctx = normal(seed + 100, (b, 154, 128))
        pooled = normal(seed + 200, (b, 80))
        t = f32(ts)
        out = tr(hidden_states=torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(ctx),
                 pooled_projections=torch.from_numpy(pooled), timestep=torch.from_numpy(t), return_dict=False)[0]
        cd = os.path.join(d, sub)
        for name, a in (("hidden_states", x), ("encoder_hidden_states", ctx), ("pooled_projections", pooled),
                        ("timestep", t), ("output", f32(out))):
            save(cd, name + ".npy", a)
    z = normal(13, (1, 16, 32, 32))
    img = pipe.vae.decode(torch.from_numpy(z), return_dict=False)[0]
    save(os.path.join(d, "vae_decode"), "latents.npy", z)
    save(os.path.join(d, "vae_decode"), "output.npy", f32(img))
    return 3


PIPE_CASES = [
    {"name": "square256_cfg", "prompt": "a photo of a cat sitting on a red chair", "negative_prompt": None,
     "seed": 0, "steps": 4, "guidance_scale": 4.5, "width": 256, "height": 256, "max_sequence_length": 256,
     "num_images_per_prompt": 1},
    {"name": "wide320x192", "prompt": "a wide panorama of a mountain lake at sunset", "negative_prompt": None,
     "seed": 1, "steps": 3, "guidance_scale": 4.5, "width": 320, "height": 192, "max_sequence_length": 256,
     "num_images_per_prompt": 1},
    {"name": "nocfg128", "prompt": "a robot astronaut", "negative_prompt": None,
     "seed": 2, "steps": 2, "guidance_scale": 1.0, "width": 128, "height": 128, "max_sequence_length": 256,
     "num_images_per_prompt": 1},
    {"name": "full28_128", "prompt": "a misty forest with ancient trees, volumetric light", "negative_prompt": None,
     "seed": 3, "steps": 28, "guidance_scale": 4.5, "width": 128, "height": 128, "max_sequence_length": 256,
     "num_images_per_prompt": 1},
    {"name": "msl77_tall128x192", "prompt": "portrait of an old wizard, highly detailed", "negative_prompt": None,
     "seed": 4, "steps": 3, "guidance_scale": 4.5, "width": 128, "height": 192, "max_sequence_length": 77,
     "num_images_per_prompt": 1},
    {"name": "empty_prompt", "prompt": "", "negative_prompt": None,
     "seed": 5, "steps": 2, "guidance_scale": 4.5, "width": 128, "height": 128, "max_sequence_length": 256,
     "num_images_per_prompt": 1},
    {"name": "long_prompt", "prompt": LONG, "negative_prompt": None,
     "seed": 6, "steps": 3, "guidance_scale": 4.5, "width": 128, "height": 128, "max_sequence_length": 256,
     "num_images_per_prompt": 1},
    {"name": "two_images", "prompt": "a cute dog in the snow", "negative_prompt": None,
     "seed": 7, "steps": 2, "guidance_scale": 4.5, "width": 128, "height": 128, "max_sequence_length": 256,
     "num_images_per_prompt": 2},
    {"name": "negative", "prompt": "a bowl of fruit, oil painting", "negative_prompt": "blurry, ugly, watermark",
     "seed": 8, "steps": 3, "guidance_scale": 5.0, "width": 128, "height": 128, "max_sequence_length": 256,
     "num_images_per_prompt": 1},
    {"name": "unicode_nocfg", "prompt": "東京の夜景 😀 café, it's NEON!", "negative_prompt": None,
     "seed": 2**32 + 9, "steps": 2, "guidance_scale": 1.0, "width": 192, "height": 128, "max_sequence_length": 256,
     "num_images_per_prompt": 1},
]


# Skip-layer-guidance arguments: a case that has them passes them to the pipeline (gen_slg.py's cases only;
# the pinned diffusers has no SLG).
SLG_KEYS = ("skip_guidance_layers", "skip_layer_guidance_scale", "skip_layer_guidance_start",
            "skip_layer_guidance_stop")


@torch.no_grad()
def pipeline_case(pipe, c, d, keep_float):
    """Run case c with latent and with np output, check that both agree, write d/<name>/ and return the
    case's cases.json entry."""
    captured = []
    orig = pipe.prepare_latents

    def capture(*args, **kwargs):
        lat = orig(*args, **kwargs)
        captured.append(lat.clone())
        return lat

    pipe.prepare_latents = capture
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt=c["prompt"], negative_prompt=c["negative_prompt"], height=c["height"], width=c["width"],
              num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"],
              num_images_per_prompt=c["num_images_per_prompt"], max_sequence_length=c["max_sequence_length"],
              **{k: c[k] for k in SLG_KEYS if k in c})
    try:
        lat = pipe(**kw, generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="latent").images
        noise = captured[0]
        dec = pipe.vae.decode(lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor,
                              return_dict=False)[0]
        img = pipe.image_processor.postprocess(dec, output_type="np")
        captured.clear()
        ref = pipe(**kw, generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="np").images
        assert np.array_equal(ref, img) and torch.equal(captured[0], noise), c["name"]
    finally:
        pipe.prepare_latents = orig
    u8 = (img * 255).round().astype(np.uint8)
    pil = pipe.image_processor.numpy_to_pil(img)
    assert all(np.array_equal(np.asarray(p), u) for p, u in zip(pil, u8))
    cd = os.path.join(d, c["name"])
    save(cd, "noise.npy", f32(noise))
    save(cd, "latents.npy", f32(lat))
    if keep_float:
        save(cd, "image.npy", f32(img))
    save(cd, "image_u8.npy", u8)
    sat = float(np.mean((img <= 0) | (img >= 1)))
    return {**c, "shapes": {"noise": list(noise.shape), "image": list(img.shape)}, "saturated_fraction": round(sat, 4)}


def gen_pipeline(pipe):
    d = fresh("pipeline")
    # The float image of one case is enough to check --dump; the rest is uint8.
    listing = [pipeline_case(pipe, c, d, keep_float=(i == 0)) for i, c in enumerate(PIPE_CASES)]
    write_json(os.path.join(d, "cases.json"), listing)
    return len(listing)


PARTS = {"tokenizer": gen_tokenizer, "encode": gen_encode, "scheduler": gen_scheduler, "randn": gen_randn,
         "components": gen_components, "pipeline": gen_pipeline}


def main():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    parts = sys.argv[1:] or list(PARTS)
    pipe = load_pipe()
    for p in parts:
        n = PARTS[p](pipe)
        print(f"{p}: {n} written")


if __name__ == "__main__":
    main()
