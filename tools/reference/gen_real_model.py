"""Tiny random text encoders beside the published SD3.5 tokenizers, and encode_prompt goldens.

Writes into tests/fixtures/tiny-sd35-real/ (after gen_real.py copied the tokenizers): the published
model_index.json (byte for byte, from argv[1], default ../shared/real-sd35), text_encoder/ and
text_encoder_2/ (CLIPTextModelWithProjection, vocab 49408, F16 as published), text_encoder_3/
(T5EncoderModel, vocab 32128, F16, two shards and an index as published), and configs only for
transformer/, vae/ and scheduler/ (no weights: the fixture serves the text path). Then
tests/fixtures/golden/real_encode/ in the layout of golden/encode/ (README.md), from diffusers'
StableDiffusion3Pipeline.encode_prompt in float32 on the stored weights.
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

import gen_goldens
from gen_model import clip_config, reinit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(ROOT, "tests", "fixtures", "tiny-sd35-real")
GOLD = os.path.join(ROOT, "tests", "fixtures", "golden", "real_encode")

CASES = [
    {"name": "sentinels", "prompt": "a cat\u0085<extra_id_0>\u0085on a mat <extra_id_1>\u3000", "negative_prompt": "",
     "max_sequence_length": 256},
    {"name": "spaces", "prompt": "\u2003photo <extra_id_99>\u00a0of\u2028a dog!!\t</s> wow\u3000",
     "negative_prompt": "blurry <extra_id_5>, low quality!", "max_sequence_length": 256},
    {"name": "msl77", "prompt": "猫\u3000<extra_id_2>\u3000犬 🐱 e\u0301 " * 6, "negative_prompt": " <pad> ",
     "max_sequence_length": 77},
]


def build():
    te = CLIPTextModelWithProjection(clip_config(32, 2, 64, "quick_gelu", 32)).eval()
    reinit(te, 201)
    te2 = CLIPTextModelWithProjection(clip_config(32, 2, 64, "gelu", 32)).eval()
    reinit(te2, 202)
    t5cfg = T5Config(vocab_size=32128, d_model=64, d_kv=32, num_heads=2, d_ff=128, num_layers=2, num_decoder_layers=2,
                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                     relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                     dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    te3 = T5EncoderModel(t5cfg).eval()
    reinit(te3, 203, {"SelfAttention.q.weight": (64 * 32) ** -0.5, "relative_attention_bias.weight": 0.5})
    return te, te2, te3


def save(src, te, te2, te3):
    for sub in ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae", "scheduler"):
        shutil.rmtree(os.path.join(FIX, sub), ignore_errors=True)
    shutil.copyfile(os.path.join(src, "model_index.json"), os.path.join(FIX, "model_index.json"))
    te.to(torch.float16).save_pretrained(os.path.join(FIX, "text_encoder"))
    te2.to(torch.float16).save_pretrained(os.path.join(FIX, "text_encoder_2"))
    te3.to(torch.float16).save_pretrained(os.path.join(FIX, "text_encoder_3"), max_shard_size="1MB")
    shards = [f for f in os.listdir(os.path.join(FIX, "text_encoder_3")) if f.endswith(".safetensors")]
    assert len(shards) == 2, shards
    # Configs only, consistent with the encoders: joint_attention_dim = T5 width (which must hold
    # both CLIP widths side by side: encode_prompt pads them to it), pooled = 32 + 32.
    SD3Transformer2DModel.from_config(dict(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm")).save_config(
        os.path.join(FIX, "transformer"))
    AutoencoderKL.from_config(dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32), layers_per_block=1,
        latent_channels=16, norm_num_groups=32, sample_size=64, scaling_factor=1.5305, shift_factor=0.0609,
        use_quant_conv=False, use_post_quant_conv=False)).save_config(os.path.join(FIX, "vae"))
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_config(os.path.join(FIX, "scheduler"))


def goldens():
    f32 = dict(torch_dtype=torch.float32)
    pipe = StableDiffusion3Pipeline(
        transformer=None, vae=None, scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(FIX, subfolder="scheduler"),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(os.path.join(FIX, "text_encoder"), **f32),
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(FIX, "tokenizer")),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(os.path.join(FIX, "text_encoder_2"), **f32),
        tokenizer_2=CLIPTokenizer.from_pretrained(os.path.join(FIX, "tokenizer_2")),
        text_encoder_3=T5EncoderModel.from_pretrained(os.path.join(FIX, "text_encoder_3"), **f32),
        tokenizer_3=T5TokenizerFast.from_pretrained(os.path.join(FIX, "tokenizer_3")))
    return gen_goldens.gen_encode(pipe, CASES, os.path.basename(GOLD))


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "real-sd35")
    torch.manual_seed(0)
    save(src, *build())
    with torch.no_grad():
        n = goldens()
    print(f"{n} encode cases in {GOLD}")


if __name__ == "__main__":
    main()
