#!/usr/bin/env python3
"""Writes a full-size SD3.5-medium pipeline directory with random weights, for benchmarks.

The shapes, names, configs and file layout are those of the published diffusers pipeline
(text_encoder CLIP-L, text_encoder_2 CLIP-G, text_encoder_3 T5-XXL in two shards with an
index, transformer MMDiT-X, vae AutoencoderKL), stored in BF16. Values are small normal noise,
so the numbers mean nothing: only speed and memory are measured with it. The tokenizers are
copied from the fixture model, whose CLIP vocabulary is the real one.

Needs only numpy. Usage:
    make_bench_model.py OUT_DIR [--components text,transformer,vae] [--fixture DIR]
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
              num_attention_heads=20, projection_dim=1280, hidden_act="gelu")
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", model_type="t5",
              is_encoder_decoder=True, architectures=["T5EncoderModel"])
MMDIT = dict(_class_name="SD3Transformer2DModel", sample_size=128, patch_size=2, in_channels=16,
             out_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
             joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
             pos_embed_max_size=384, dual_attention_layers=list(range(13)), qk_norm="rms_norm")
VAE = dict(_class_name="AutoencoderKL", in_channels=3, out_channels=3, latent_channels=16,
           block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
           act_fn="silu", sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
           use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
           mid_block_add_attention=True,
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
MODEL_INDEX = {
    "_class_name": "StableDiffusion3Pipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "text_encoder_3": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "tokenizer_3": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "SD3Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def clip_tensors(c):
    d, i = c["hidden_size"], c["intermediate_size"]
    yield "text_model.embeddings.token_embedding.weight", (49408, d)
    yield "text_model.embeddings.position_embedding.weight", (77, d)
    for n in range(c["num_hidden_layers"]):
        p = f"text_model.encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield p + f"self_attn.{proj}.weight", (d, d)
            yield p + f"self_attn.{proj}.bias", (d,)
        for ln in ("layer_norm1", "layer_norm2"):
            yield p + ln + ".weight", (d,)
            yield p + ln + ".bias", (d,)
        yield p + "mlp.fc1.weight", (i, d)
        yield p + "mlp.fc1.bias", (i,)
        yield p + "mlp.fc2.weight", (d, i)
        yield p + "mlp.fc2.bias", (d,)
    yield "text_model.final_layer_norm.weight", (d,)
    yield "text_model.final_layer_norm.bias", (d,)
    yield "text_projection.weight", (c["projection_dim"], d)


def t5_tensors(c):
    d, inner, f = c["d_model"], c["num_heads"] * c["d_kv"], c["d_ff"]
    yield "shared.weight", (c["vocab_size"], d)
    for n in range(c["num_layers"]):
        p = f"encoder.block.{n}.layer."
        for w in "qkv":
            yield p + f"0.SelfAttention.{w}.weight", (inner, d)
        yield p + "0.SelfAttention.o.weight", (d, inner)
        if n == 0:
            yield p + "0.SelfAttention.relative_attention_bias.weight", (32, c["num_heads"])
        yield p + "0.layer_norm.weight", (d,)
        yield p + "1.DenseReluDense.wi_0.weight", (f, d)
        yield p + "1.DenseReluDense.wi_1.weight", (f, d)
        yield p + "1.DenseReluDense.wo.weight", (d, f)
        yield p + "1.layer_norm.weight", (d,)
    yield "encoder.final_layer_norm.weight", (d,)


def mmdit_tensors(c):
    D = c["num_attention_heads"] * c["attention_head_dim"]
    hd, L, G = c["attention_head_dim"], c["num_layers"], c["pos_embed_max_size"]
    yield "pos_embed.proj.weight", (D, c["in_channels"], 2, 2)
    yield "pos_embed.proj.bias", (D,)
    yield "pos_embed.pos_embed", (1, G * G, D)
    for e, i in (("timestep_embedder", 256), ("text_embedder", c["pooled_projection_dim"])):
        yield f"time_text_embed.{e}.linear_1.weight", (D, i)
        yield f"time_text_embed.{e}.linear_1.bias", (D,)
        yield f"time_text_embed.{e}.linear_2.weight", (D, D)
        yield f"time_text_embed.{e}.linear_2.bias", (D,)
    yield "context_embedder.weight", (D, c["joint_attention_dim"])
    yield "context_embedder.bias", (D,)
    for n in range(L):
        p = f"transformer_blocks.{n}."
        last, dual = n == L - 1, n in c["dual_attention_layers"]
        yield p + "norm1.linear.weight", ((9 if dual else 6) * D, D)
        yield p + "norm1.linear.bias", ((9 if dual else 6) * D,)
        yield p + "norm1_context.linear.weight", ((2 if last else 6) * D, D)
        yield p + "norm1_context.linear.bias", ((2 if last else 6) * D,)
        projs = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0"]
        if not last:
            projs.append("to_add_out")
        for proj in projs:
            yield p + f"attn.{proj}.weight", (D, D)
            yield p + f"attn.{proj}.bias", (D,)
        for nm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            yield p + f"attn.{nm}.weight", (hd,)
        if dual:
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                yield p + f"attn2.{proj}.weight", (D, D)
                yield p + f"attn2.{proj}.bias", (D,)
            for nm in ("norm_q", "norm_k"):
                yield p + f"attn2.{nm}.weight", (hd,)
        ffs = ["ff"] if last else ["ff", "ff_context"]
        for ff in ffs:
            yield p + f"{ff}.net.0.proj.weight", (4 * D, D)
            yield p + f"{ff}.net.0.proj.bias", (4 * D,)
            yield p + f"{ff}.net.2.weight", (D, 4 * D)
            yield p + f"{ff}.net.2.bias", (D,)
    yield "norm_out.linear.weight", (2 * D, D)
    yield "norm_out.linear.bias", (2 * D,)
    yield "proj_out.weight", (c["patch_size"] ** 2 * c["out_channels"], D)
    yield "proj_out.bias", (c["patch_size"] ** 2 * c["out_channels"],)


def conv(name, o, i, k):
    yield name + ".weight", (o, i, k, k)
    yield name + ".bias", (o,)


def norm(name, c):
    yield name + ".weight", (c,)
    yield name + ".bias", (c,)


def resnet(p, cin, cout):
    yield from norm(p + "norm1", cin)
    yield from conv(p + "conv1", cout, cin, 3)
    yield from norm(p + "norm2", cout)
    yield from conv(p + "conv2", cout, cout, 3)
    if cin != cout:
        yield from conv(p + "conv_shortcut", cout, cin, 1)


def vae_tensors(c):
    ch = list(reversed(c["block_out_channels"]))
    top = ch[0]
    yield from conv("decoder.conv_in", top, c["latent_channels"], 3)
    for r in range(2):
        yield from resnet(f"decoder.mid_block.resnets.{r}.", top, top)
    a = "decoder.mid_block.attentions.0."
    yield from norm(a + "group_norm", top)
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        yield a + proj + ".weight", (top, top)
        yield a + proj + ".bias", (top,)
    prev = top
    for b, cout in enumerate(ch):
        for r in range(c["layers_per_block"] + 1):
            yield from resnet(f"decoder.up_blocks.{b}.resnets.{r}.", prev if r == 0 else cout, cout)
        prev = cout
        if b < len(ch) - 1:
            yield from conv(f"decoder.up_blocks.{b}.upsamplers.0.conv", cout, cout, 3)
    yield from norm("decoder.conv_norm_out", prev)
    yield from conv("decoder.conv_out", c["out_channels"], prev, 3)


class NoisePool:
    """Random BF16 bytes, cut from one pool at moving offsets: fast to write, no denormals."""

    def __init__(self, seed=0, n=1 << 26):
        rng = np.random.default_rng(seed)
        vals = (rng.standard_normal(n, dtype=np.float32) * 0.02).astype(np.float32)
        self.pool = (vals.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        self.pos = 0

    def take(self, nbytes):
        out = bytearray()
        while len(out) < nbytes:
            chunk = self.pool[self.pos:self.pos + (nbytes - len(out))]
            out += chunk
            self.pos = (self.pos + len(chunk) + 2 * 7919) % (len(self.pool) - 2 * 7919)
        return bytes(out)


ONE_BF16 = struct.pack("<H", 0x3F80)


def write_safetensors(path, tensors, pool):
    header, off = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in tensors:
            n = int(np.prod(shape)) * 2
            # Norm weights of one keep activations in a realistic range.
            is_norm = len(shape) == 1 and ("norm" in name or "layer_norm" in name)
            f.write(ONE_BF16 * (n // 2) if is_norm and not name.endswith("bias") else pool.take(n))


def write_component(out, sub, stem, tensors, config, pool, shards=1, cfg_name="config.json"):
    d = os.path.join(out, sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, cfg_name), "w") as f:
        json.dump(config, f, indent=2)
    tensors = list(tensors)
    if shards == 1:
        write_safetensors(os.path.join(d, stem + ".safetensors"), tensors, pool)
        return
    per = (len(tensors) + shards - 1) // shards
    weight_map, total = {}, 0
    for s in range(shards):
        part = tensors[s * per:(s + 1) * per]
        fname = f"{stem}-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(d, fname), part, pool)
        for name, shape in part:
            weight_map[name] = fname
            total += int(np.prod(shape)) * 2
    with open(os.path.join(d, stem + ".safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--components", default="text,transformer,vae")
    ap.add_argument("--fixture", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                      "fixtures", "tiny-sd35"))
    args = ap.parse_args()
    want = set(args.components.split(","))
    pool = NoisePool()
    os.makedirs(args.out, exist_ok=True)
    for sub in ("scheduler", "tokenizer", "tokenizer_2", "tokenizer_3"):
        dst = os.path.join(args.out, sub)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(os.path.join(args.fixture, sub), dst)
    common = dict(max_position_embeddings=77, vocab_size=49408, layer_norm_eps=1e-5,
                  eos_token_id=2, model_type="clip_text_model",
                  architectures=["CLIPTextModelWithProjection"])
    if "text" in want:
        write_component(args.out, "text_encoder", "model", clip_tensors(CLIP_L),
                        {**common, **CLIP_L}, pool)
        write_component(args.out, "text_encoder_2", "model", clip_tensors(CLIP_G),
                        {**common, **CLIP_G}, pool)
        write_component(args.out, "text_encoder_3", "model", t5_tensors(T5_XXL), T5_XXL, pool,
                        shards=2)
    if "transformer" in want:
        write_component(args.out, "transformer", "diffusion_pytorch_model", mmdit_tensors(MMDIT),
                        MMDIT, pool)
    if "vae" in want:
        write_component(args.out, "vae", "diffusion_pytorch_model", vae_tensors(VAE), VAE, pool)
    # Last: its presence is what tools/bench-gpu.sh takes for a finished directory.
    with open(os.path.join(args.out, "model_index.json"), "w") as f:
        json.dump(MODEL_INDEX, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
