"""Skip-layer-guidance (SLG) goldens: components/transformer_skip/ and the SLG cases of pipeline/.

Needs the diffusers of requirements-slg.txt (0.32.0, the first release with SLG: StableDiffusion3Pipeline's
skip_guidance_layers, SD3Transformer2DModel.forward's skip_layers); everything else as in requirements.txt.
The main pin stays 0.31.0 because 0.32.0 saves different config files (see README.md).  Run it after
gen_goldens.py: it reads the components/transformer/ inputs and adds its cases to pipeline/cases.json,
both of which gen_goldens.py rewrites.  Not for the goldens that need no SLG.
"""
import inspect
import json
import os
import shutil

import diffusers
import numpy as np
import torch
from diffusers import StableDiffusion3Pipeline

import gen_goldens as g

with open(os.path.join(g.HERE, "requirements-slg.txt"), encoding="utf-8") as _f:
    SLG_DIFFUSERS = next(ln.split("==")[1].strip() for ln in _f if ln.startswith("diffusers=="))

SLG = {"skip_guidance_layers": [1], "skip_layer_guidance_scale": 2.8, "skip_layer_guidance_start": 0.01,
       "skip_layer_guidance_stop": 0.2}

# Active steps (i > N*start and i < N*stop): step 1 of 10; steps 1 and 2 of 15.
SLG_CASES = [
    {"name": "slg10_128", "prompt": "a lighthouse on a rocky coast, stormy sea", "negative_prompt": None,
     "seed": 11, "steps": 10, "guidance_scale": 4.5, "width": 128, "height": 128, "max_sequence_length": 256,
     "num_images_per_prompt": 1, **SLG},
    {"name": "slg15_wide192x128", "prompt": "a red fox in a snowy birch forest", "negative_prompt": "blurry, dark",
     "seed": 12, "steps": 15, "guidance_scale": 4.5, "width": 192, "height": 128, "max_sequence_length": 256,
     "num_images_per_prompt": 1, **SLG},
]

SKIP_SETS = ([1], [0, 2])


def load(path):
    return torch.from_numpy(np.load(path))


@torch.no_grad()
def gen_transformer_skip(pipe):
    src = os.path.join(g.GOLD, "components", "transformer")
    d = os.path.join(g.GOLD, "components", "transformer_skip")
    shutil.rmtree(d, ignore_errors=True)
    args = {k: load(os.path.join(src, k + ".npy"))
            for k in ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")}
    plain = pipe.transformer(**args, return_dict=False)[0]
    # The SLG release must run the plain forward exactly as the pinned one did.
    assert torch.equal(plain, load(os.path.join(src, "output.npy")))
    listing = []
    for layers in SKIP_SETS:
        out = pipe.transformer(**args, skip_layers=layers, return_dict=False)[0]
        assert not torch.equal(out, plain)
        name = "output_skip" + "_".join(map(str, layers)) + ".npy"
        g.save(d, name, g.f32(out))
        listing.append({"file": name, "skip_layers": layers, "inputs": "../transformer/",
                        "diffusers_version": SLG_DIFFUSERS})
    g.write_json(os.path.join(d, "cases.json"), listing)
    return len(listing)


@torch.no_grad()
def gen_slg_pipeline(pipe):
    d = os.path.join(g.GOLD, "pipeline")
    path = os.path.join(d, "cases.json")
    with open(path, encoding="utf-8") as f:
        names = {c["name"] for c in SLG_CASES}
        listing = [c for c in json.load(f) if c["name"] not in names]
    for c in SLG_CASES:
        shutil.rmtree(os.path.join(d, c["name"]), ignore_errors=True)
        entry = g.pipeline_case(pipe, c, d, keep_float=False)
        # SLG must have changed the result: the window holds at least one step.
        plain = pipe(**{k: c[k] for k in ("prompt", "negative_prompt", "height", "width", "guidance_scale",
                                          "num_images_per_prompt", "max_sequence_length")},
                     num_inference_steps=c["steps"], output_type="latent",
                     generator=torch.Generator("cpu").manual_seed(c["seed"])).images
        assert not np.array_equal(g.f32(plain), np.load(os.path.join(d, c["name"], "latents.npy"))), c["name"]
        entry["diffusers_version"] = SLG_DIFFUSERS
        listing.append(entry)
    g.write_json(path, listing)
    return len(SLG_CASES)


def main():
    assert diffusers.__version__ == SLG_DIFFUSERS, f"gen_slg.py needs diffusers {SLG_DIFFUSERS}"
    assert "skip_guidance_layers" in inspect.signature(StableDiffusion3Pipeline.__call__).parameters
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    pipe = g.load_pipe()
    print(f"transformer_skip: {gen_transformer_skip(pipe)} written")
    print(f"pipeline (SLG): {gen_slg_pipeline(pipe)} written")


if __name__ == "__main__":
    main()
