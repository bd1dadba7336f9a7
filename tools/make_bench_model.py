#!/usr/bin/env python3
"""Writes an SD3.5-medium pipeline directory in the published layout, with random weights.

Everything but the weights is copied byte for byte from a directory of the published files
(default: tests/fixtures/sd35-medium-published, the configs and tokenizers of
stabilityai/stable-diffusion-3.5-medium). The weights have the published tensor names, shapes,
dtypes and files: the text encoders in F16 (T5-XXL in the two shards that the published
model.safetensors.index.json names, tensor by tensor), the transformer and the VAE in BF16, the
VAE file holding the encoder as well as the decoder. Values are small normal noise from numpy's
PCG64, so the numbers mean nothing: speed and memory are measured with it, and diffusers loads it
as it loads the published pipeline.

--tiny shrinks the sizes (widths, depths; the vocabularies stay) by rewriting only those keys of
each config, for tests that the published layout loads; the T5 shards keep the published
assignment of every tensor that remains.

Needs only numpy. Usage:
    make_bench_model.py OUT_DIR [--components text,transformer,vae] [--published DIR] [--tiny]
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISHED = os.path.join(HERE, "..", "tests", "fixtures", "sd35-medium-published")

# The keys --tiny rewrites; every other key keeps its published value. The widths agree with
# each other as the pipeline needs: pooled_projection_dim = the two CLIP projections,
# joint_attention_dim = T5's d_model, caption_projection_dim = heads x head_dim.
TINY = {
    "text_encoder": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, projection_dim=32),
    "text_encoder_2": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=3, projection_dim=48),
    "text_encoder_3": dict(d_model=128, d_ff=256, num_layers=2, num_decoder_layers=2,
                           num_heads=2),
    "transformer": dict(num_layers=3, num_attention_heads=2, joint_attention_dim=128,
                        caption_projection_dim=128, pooled_projection_dim=80,
                        pos_embed_max_size=32, sample_size=32, dual_attention_layers=[0, 1]),
    "vae": dict(block_out_channels=[32, 32, 64, 64]),
}

def clip_tensors(c):
    d, i = c["hidden_size"], c["intermediate_size"]
    yield "text_model.embeddings.token_embedding.weight", (c["vocab_size"], d)
    yield "text_model.embeddings.position_embedding.weight", (c["max_position_embeddings"], d)
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
            yield p + "0.SelfAttention.relative_attention_bias.weight", (c["relative_attention_num_buckets"], c["num_heads"])
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


def vae_attention(a, ch):
    yield from norm(a + "group_norm", ch)
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        yield a + proj + ".weight", (ch, ch)
        yield a + proj + ".bias", (ch,)


def vae_mid_block(p, ch, add_attention):
    for r in range(2):
        yield from resnet(f"{p}mid_block.resnets.{r}.", ch, ch)
    if add_attention:
        yield from vae_attention(f"{p}mid_block.attentions.0.", ch)


def vae_encoder_tensors(c):
    ch = c["block_out_channels"]
    yield from conv("encoder.conv_in", ch[0], c["in_channels"], 3)
    prev = ch[0]
    for b, cout in enumerate(ch):
        for r in range(c["layers_per_block"]):
            yield from resnet(f"encoder.down_blocks.{b}.resnets.{r}.", prev if r == 0 else cout,
                              cout)
        prev = cout
        if b < len(ch) - 1:
            yield from conv(f"encoder.down_blocks.{b}.downsamplers.0.conv", cout, cout, 3)
    yield from vae_mid_block("encoder.", prev, c["mid_block_add_attention"])
    yield from norm("encoder.conv_norm_out", prev)
    yield from conv("encoder.conv_out", 2 * c["latent_channels"], prev, 3)
    if c.get("use_quant_conv", True):
        yield from conv("quant_conv", 2 * c["latent_channels"], 2 * c["latent_channels"], 1)


def vae_tensors(c):
    yield from vae_encoder_tensors(c)
    if c.get("use_post_quant_conv", True):
        yield from conv("post_quant_conv", c["latent_channels"], c["latent_channels"], 1)
    ch = list(reversed(c["block_out_channels"]))
    top = ch[0]
    yield from conv("decoder.conv_in", top, c["latent_channels"], 3)
    yield from vae_mid_block("decoder.", top, c["mid_block_add_attention"])
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
    """Random bytes of one 16-bit dtype, cut from one pool at moving offsets: fast to write, and
    normal values of std 0.02, so no denormals, infinities or NaNs."""

    def __init__(self, dtype, seed, n=1 << 26):
        vals = np.random.default_rng(seed).standard_normal(n, dtype=np.float32) * 0.02
        if dtype == "BF16":
            self.pool = memoryview((vals.view(np.uint32) >> 16).astype(np.uint16).tobytes())
        else:
            self.pool = memoryview(vals.astype(np.float16).tobytes())
        self.pos = 0

    def write(self, f, nbytes):
        while nbytes:
            chunk = self.pool[self.pos:self.pos + nbytes]
            f.write(chunk)
            nbytes -= len(chunk)
            self.pos = (self.pos + len(chunk) + 2 * 7919) % (len(self.pool) - 2 * 7919)


ONE = {"BF16": struct.pack("<H", 0x3F80), "F16": struct.pack("<H", 0x3C00)}


def write_safetensors(path, tensors, dtype, pool):
    """As safetensors' save_file writes it: tensors in name order (one dtype), the header padded
    with spaces to 8 bytes, transformers' and diffusers' {"format": "pt"} metadata."""
    tensors = sorted(tensors)
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in tensors:
            n = int(np.prod(shape)) * 2
            # Norm weights of one keep activations in a realistic range.
            is_norm = len(shape) == 1 and "norm" in name and not name.endswith("bias")
            if is_norm:
                f.write(ONE[dtype] * (n // 2))
            else:
                pool.write(f, n)


def write_config(src, dst, tiny):
    """The published bytes, or with --tiny the same keys with the sizes shrunk, written as
    transformers' and diffusers' to_json_file write them."""
    if tiny is None:
        shutil.copyfile(src, dst)
        return
    with open(src) as f:
        cfg = json.load(f)
    missing = set(tiny) - set(cfg)
    if missing:
        sys.exit(f"{src}: lacks the keys {sorted(missing)} that --tiny rewrites")
    cfg.update(tiny)
    with open(dst, "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_shards(d, stem, tensors, dtype, pool, published_index):
    """Every tensor in the shard the published index assigns it to; the index as transformers'
    save_pretrained writes it (total_size = the tensors' bytes)."""
    with open(published_index) as f:
        assign = json.load(f)["weight_map"]
    shards, weight_map, total = {}, {}, 0
    for name, shape in tensors:
        if name not in assign:
            sys.exit(f"{published_index}: does not name tensor {name}")
        shards.setdefault(assign[name], []).append((name, shape))
        weight_map[name] = assign[name]
        total += int(np.prod(shape)) * 2
    for fname in sorted(set(assign.values())):
        write_safetensors(os.path.join(d, fname), shards.get(fname, []), dtype, pool)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(d, stem + ".safetensors.index.json"), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")


# component: (weight file stem, tensor list, dtype, sharded)
COMPONENTS = {
    "text_encoder": ("model", clip_tensors, "F16", False),
    "text_encoder_2": ("model", clip_tensors, "F16", False),
    "text_encoder_3": ("model", t5_tensors, "F16", True),
    "transformer": ("diffusion_pytorch_model", mmdit_tensors, "BF16", False),
    "vae": ("diffusion_pytorch_model", vae_tensors, "BF16", False),
}
GROUPS = {"text": ("text_encoder", "text_encoder_2", "text_encoder_3"),
          "transformer": ("transformer",), "vae": ("vae",)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--components", default="text,transformer,vae",
                    help="comma-separated: text, transformer, vae")
    ap.add_argument("--published", default=PUBLISHED,
                    help="directory of the published configs and tokenizers")
    ap.add_argument("--tiny", action="store_true", help="shrink the sizes (for tests)")
    args = ap.parse_args()
    want = args.components.split(",")
    unknown = set(want) - set(GROUPS)
    if unknown:
        ap.error(f"unknown components {sorted(unknown)} (text, transformer, vae)")
    pool_size = 1 << (20 if args.tiny else 26)
    pools = {dt: NoisePool(dt, seed, pool_size) for dt, seed in (("F16", 1), ("BF16", 2))}
    pub = args.published
    os.makedirs(args.out, exist_ok=True)
    for sub in ("scheduler", "tokenizer", "tokenizer_2", "tokenizer_3"):
        dst = os.path.join(args.out, sub)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(os.path.join(pub, sub), dst)
    for comp in (c for g in want for c in GROUPS[g]):
        stem, tensors, dtype, sharded = COMPONENTS[comp]
        src, d = os.path.join(pub, comp), os.path.join(args.out, comp)
        os.makedirs(d, exist_ok=True)
        write_config(os.path.join(src, "config.json"), os.path.join(d, "config.json"),
                     TINY[comp] if args.tiny else None)
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        if sharded:
            write_shards(d, stem, tensors(cfg), dtype, pools[dtype],
                         os.path.join(src, stem + ".safetensors.index.json"))
        else:
            write_safetensors(os.path.join(d, stem + ".safetensors"), tensors(cfg), dtype,
                              pools[dtype])
    # Last, as the Makefile takes it to mean the directory is complete.
    shutil.copyfile(os.path.join(pub, "model_index.json"),
                    os.path.join(args.out, "model_index.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
