"""Build the tiny random SD3.5-medium-style pipeline in tests/fixtures/tiny-sd35 (diffusers layout).

Every weight is drawn from numpy's PCG64 (not torch.nn.init) so the files do not depend on which
torch CPU kernel (AVX2 or scalar) a machine dispatches to.  The tokenizers must already exist
(gen_tokenizers.py).  Not for goldens (gen_goldens.py).
"""
import json
import os
import shutil
import tempfile

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel,
                          T5TokenizerFast)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "tiny-sd35")


def is_norm(module):
    return "norm" in type(module).__name__.lower()


def reinit(model, seed, special=None):
    """Redraw every parameter: norm weights ~1, biases small, matrices N(0, 1/fan_in).

    special maps a parameter-name suffix to a standard deviation overriding the default."""
    rng = np.random.Generator(np.random.PCG64(seed))
    special = special or {}
    with torch.no_grad():
        for mname, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                shape = tuple(p.shape)
                z = rng.standard_normal(shape)
                std = next((s for suffix, s in special.items() if full.endswith(suffix)), None)
                if std is not None:
                    val = z * std
                elif is_norm(module) and pname == "weight":
                    val = 1.0 + 0.1 * z
                elif is_norm(module) and pname == "bias":
                    val = 0.05 * z
                elif pname == "bias":
                    val = 0.02 * z
                elif isinstance(module, torch.nn.Embedding):
                    val = 0.5 * z
                else:
                    fan_in = int(np.prod(shape[1:]))
                    val = z / np.sqrt(fan_in)
                p.copy_(torch.from_numpy(val.astype(np.float32)))


def clip_config(hidden, heads, inter, act, proj):
    # bos/eos/pad ids are the legacy values the SD3 repo configs carry (spec §4.1).
    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inter, projection_dim=proj,
                          num_hidden_layers=3, num_attention_heads=heads, max_position_embeddings=77,
                          hidden_act=act, layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)


def build():
    tok = CLIPTokenizer.from_pretrained(os.path.join(OUT, "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(OUT, "tokenizer_2"))
    tok3 = T5TokenizerFast.from_pretrained(os.path.join(OUT, "tokenizer_3"))

    te = CLIPTextModelWithProjection(clip_config(32, 2, 64, "quick_gelu", 32)).eval()
    reinit(te, 101)
    te2 = CLIPTextModelWithProjection(clip_config(48, 3, 96, "gelu", 48)).eval()
    reinit(te2, 102)

    t5cfg = T5Config(vocab_size=len(tok3), d_model=128, d_kv=64, num_heads=2, d_ff=256, num_layers=2,
                     num_decoder_layers=2, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                     relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                     dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    te3 = T5EncoderModel(t5cfg).eval()
    # T5 has no 1/sqrt(d_kv) in attention; keep q small as T5's own init does so softmax is not one-hot.
    reinit(te3, 103, {"SelfAttention.q.weight": (128 * 64) ** -0.5,
                      "relative_attention_bias.weight": 0.5})

    tr = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=3,
                               attention_head_dim=64, num_attention_heads=2, joint_attention_dim=128,
                               caption_projection_dim=128, pooled_projection_dim=80, pos_embed_max_size=32,
                               dual_attention_layers=(0, 1), qk_norm="rms_norm").eval()
    reinit(tr, 104)

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 64, 64),
                        layers_per_block=2, act_fn="silu", latent_channels=16, norm_num_groups=32,
                        sample_size=256, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                        use_post_quant_conv=False, mid_block_add_attention=True, force_upcast=True).eval()
    reinit(vae, 105)

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(transformer=tr, scheduler=sched, vae=vae, text_encoder=te, tokenizer=tok,
                                    text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=te3, tokenizer_3=tok3)
    return pipe


def save(pipe):
    # The tokenizer folders are written by gen_tokenizers.py and left untouched here.
    for sub in ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae", "scheduler"):
        shutil.rmtree(os.path.join(OUT, sub), ignore_errors=True)
    pipe.text_encoder.to(torch.float16).save_pretrained(os.path.join(OUT, "text_encoder"))
    pipe.text_encoder_2.to(torch.bfloat16).save_pretrained(os.path.join(OUT, "text_encoder_2"))
    pipe.text_encoder_3.to(torch.bfloat16).save_pretrained(os.path.join(OUT, "text_encoder_3"),
                                                           max_shard_size="700KB")
    # Matrices and convolution kernels in BF16, vectors and the pos_embed buffer in F32: one file
    # holding two dtypes, as some published checkpoints do, at half the size.
    for p in pipe.transformer.parameters():
        if p.ndim >= 2:
            p.data = p.data.to(torch.bfloat16)
    pipe.transformer.save_pretrained(os.path.join(OUT, "transformer"))
    pipe.vae.to(torch.float16).save_pretrained(os.path.join(OUT, "vae"))
    pipe.scheduler.save_pretrained(os.path.join(OUT, "scheduler"))
    tmp = tempfile.mkdtemp()
    pipe.save_config(tmp)
    shutil.copy(os.path.join(tmp, "model_index.json"), os.path.join(OUT, "model_index.json"))
    shutil.rmtree(tmp)
    shards = [f for f in os.listdir(os.path.join(OUT, "text_encoder_3")) if f.endswith(".safetensors")]
    assert len(shards) == 2, shards


def main():
    torch.manual_seed(0)
    pipe = build()
    save(pipe)
    with open(os.path.join(OUT, "model_index.json")) as f:
        print(json.load(f))


if __name__ == "__main__":
    main()
