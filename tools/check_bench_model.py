#!/usr/bin/env python3
"""Checks that diffusers and transformers load a make_bench_model.py directory as the published one.

Each component is loaded with its reference class's from_pretrained(output_loading_info=True)
in its stored dtype, and must have no missing, unexpected or mismatched keys; then
StableDiffusion3Pipeline.from_pretrained(DIR) must assemble the pipeline from the directory.
T5-XXL (9.5 GB in F16) is checked key by key and shape by shape against a model built on the
meta device unless --load-t5 is given, so that the check fits in about 8 GB of memory.

Needs torch, diffusers, transformers (tools/reference/requirements.txt) and accelerate, without
which diffusers builds each model in float32 before loading it (twice the memory). Usage:
    check_bench_model.py DIR [--load-t5]
"""
import argparse
import gc
import json
import os
import sys

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
from safetensors import safe_open
from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16}
PUBLISHED_DTYPE = {"text_encoder": "F16", "text_encoder_2": "F16", "text_encoder_3": "F16",
                   "transformer": "BF16", "vae": "BF16"}


def stored(d):
    """{tensor: (dtype, shape)} from the safetensors headers of component directory d."""
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), framework="pt") as st:
                for k in st.keys():
                    sl = st.get_slice(k)
                    out[k] = (sl.get_dtype(), tuple(sl.get_shape()))
    return out


def check_info(name, info):
    bad = {k: v for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        sys.exit(f"{name}: {bad} {info.get('error_msgs')}")
    print(f"{name}: loaded, no missing, unexpected or mismatched keys")


def check_dtypes(root, comp):
    tensors = stored(os.path.join(root, comp))
    kinds = {dt for dt, _ in tensors.values()}
    if kinds != {PUBLISHED_DTYPE[comp]}:
        sys.exit(f"{comp}: stored dtypes {sorted(kinds)}, published {PUBLISHED_DTYPE[comp]}")
    return tensors


def check_t5_meta(root):
    d = os.path.join(root, "text_encoder_3")
    with torch.device("meta"):
        model = T5EncoderModel(T5Config.from_pretrained(d))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # from_pretrained ties encoder.embed_tokens to shared, so the file holds only shared.weight
    want.pop("encoder.embed_tokens.weight")
    have = {k: shape for k, (_, shape) in check_dtypes(root, "text_encoder_3").items()}
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        listed = set(json.load(f)["weight_map"])
    if want != have or listed != set(have):
        sys.exit(f"text_encoder_3: missing {sorted(set(want) - set(have))}, unexpected "
                 f"{sorted(set(have) - set(want))}, shapes differ for "
                 f"{sorted(k for k in want if k in have and want[k] != have[k])}, "
                 f"index differs for {sorted(listed ^ set(have))}")
    print("text_encoder_3: every T5EncoderModel tensor present with its shape (meta device)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--load-t5", action="store_true", help="load T5-XXL for real (9.5 GB)")
    args = ap.parse_args()
    root = args.dir
    for comp, cls in (("text_encoder", CLIPTextModelWithProjection),
                      ("text_encoder_2", CLIPTextModelWithProjection),
                      ("transformer", SD3Transformer2DModel), ("vae", AutoencoderKL)):
        check_dtypes(root, comp)
        model, info = cls.from_pretrained(os.path.join(root, comp), output_loading_info=True,
                                          torch_dtype=DTYPES[PUBLISHED_DTYPE[comp]])
        check_info(comp, info)
        del model
        gc.collect()
    if args.load_t5:
        model, info = T5EncoderModel.from_pretrained(os.path.join(root, "text_encoder_3"),
                                                     output_loading_info=True,
                                                     torch_dtype=torch.float16)
        check_info("text_encoder_3", info)
        del model
    else:
        check_t5_meta(root)
    tok = T5TokenizerFast.from_pretrained(os.path.join(root, "tokenizer_3"))
    print(f"tokenizer_3: {type(tok).__name__}, {len(tok)} tokens")
    skip = {} if args.load_t5 else {"text_encoder_3": None}
    pipe = StableDiffusion3Pipeline.from_pretrained(root, torch_dtype=torch.bfloat16, **skip)
    print("StableDiffusion3Pipeline.from_pretrained: loaded",
          "(text_encoder_3 checked above)" if skip else "", type(pipe.transformer).__name__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
