"""FOCUS test-time controller goldens under tests/fixtures/golden/focus/ (parts cost, transformer, pipeline).

Usage: gen_focus.py [part ...] (default: all).  Our own torch implementation of the controller of the
authors' code (ericbill21/FOCUS: src/controller.py, src/losses.py, src/sd3/attention_processor.py,
src/sd3/pipeline.py), run on the fixture pipeline of gen_goldens.load_pipe in float32.  With FOCUS_SRC set to
a checkout of that repository it also runs the authors' classes on the same inputs and asserts that they give
the same numbers; that needs requirements-focus.txt (their pipeline imports names diffusers 0.31.0 lacks).
"""
import math
import os
import sys

import diffusers
import numpy as np
import torch
import torch.nn.functional as F

import gen_goldens as g

TXT = 154  # the text length the reference slices: 77 CLIP + max_sequence_length 77 T5 tokens
EPS = 1e-10


# --- subjects, capture, maps -------------------------------------------------------------------------------

def subject_rows(t5, clip):
    """Controller.process_ids (model "SD3"): the joint-sequence rows (subject k's T5 positions + 77, then its
    CLIP positions, k = 0, 1, ...) and the label groups (subject k's indices into that row list)."""
    rows, labels = [], []
    for k in range(max(len(t5), len(clip))):
        ids = [i + 77 for i in t5[k]] if k < len(t5) else []
        ids += list(clip[k]) if k < len(clip) else []
        labels.append(torch.arange(len(rows), len(rows) + len(ids)))
        rows += ids
    return torch.tensor(rows), labels


class Capture:
    """Shared by the processors of all joint blocks: while on, each keeps its [rows, L_img] map of batch 0."""

    def __init__(self):
        self.on = False
        self.rows = None
        self.maps = []


class CaptureProcessor:
    """diffusers 0.31.0's JointAttnProcessor2_0, op for op; while capturing, also the explicit
    softmax(QK^T/sqrt(d)) over the joint [image | text] keys, image queries x the last 154 (text) keys,
    mean over heads, as (B, L_txt, L_img), subject rows kept."""

    def __init__(self, cap):
        self.cap = cap

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        residual = hidden_states
        b = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        hd = k.shape[-1] // attn.heads
        q, k, v = (x.view(b, -1, attn.heads, hd).transpose(1, 2) for x in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if encoder_hidden_states is not None:
            cq, ck, cv = (p(encoder_hidden_states).view(b, -1, attn.heads, hd).transpose(1, 2)
                          for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)
            if self.cap.on:
                probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(k.shape[-1]), dim=-1)
                n = probs.shape[2]
                img_txt = probs[:, :, 0:n - TXT, n - TXT:n].mean(dim=1).transpose(-1, -2)
                self.cap.maps.append(img_txt[0, self.cap.rows])
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * hd).to(q.dtype)
        if encoder_hidden_states is not None:
            out, ctx = out[:, :residual.shape[1]], out[:, residual.shape[1]:]
            if not attn.context_pre_only:
                ctx = attn.to_add_out(ctx)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, ctx) if encoder_hidden_states is not None else out


def install(pipe, cap):
    for block in pipe.transformer.transformer_blocks:
        block.attn.set_processor(CaptureProcessor(cap))


def blur(x, gh, gw):
    """torchvision's gaussian_blur(x.view(-1, 1, gh, gw), kernel_size=3, sigma=1.0).view(x.shape): the 1-D
    kernel from linspace(-1, 1, 3), the 2-D one as their outer product (mm), reflect padding, conv2d."""
    r = torch.linspace(-1.0, 1.0, steps=3)
    pdf = torch.exp(-0.5 * (r / 1.0).pow(2))
    k1 = pdf / pdf.sum()
    k2 = torch.mm(k1[:, None], k1[None, :]).to(dtype=x.dtype)
    img = F.pad(x.view(-1, 1, gh, gw), [1, 1, 1, 1], mode="reflect")
    return F.conv2d(img, k2.expand(1, 1, 3, 3), groups=1).view(x.shape)


def block_mean(maps, grid):
    """Controller.return_storage: stack the blocks, fp32, mean over blocks, blur on the gh x gw patch grid."""
    return blur(torch.stack(maps).to(torch.float32).mean(dim=0), *grid)


# --- running costs (src/losses.py) -------------------------------------------------------------------------

def jsd(q):
    """Normalised generalised Jensen-Shannon divergence of the rows of q, each cubed and normalised first."""
    t = q.shape[0]
    q = q**3
    q = q / q.sum(dim=-1, keepdim=True).clamp_min(EPS)
    m = q.mean(dim=0, keepdim=True)
    return (q * ((q + EPS).log() - (m + EPS).log())).sum(dim=-1).mean() / math.log(t)


def focus(emb, labels, grid):
    within, n_within, mixes = 0.0, 0, []
    for grp in labels:
        p = emb[grp]
        if len(grp) > 1:
            within += jsd(p)
            n_within += 1
        mixes.append(torch.mean(p, dim=0))
    between = 0.0
    if len(mixes) > 1:
        between += 1 - jsd(torch.stack(mixes, dim=0))
    if n_within > 0:
        within /= n_within
    return (within + between) / 2


def attend_and_excite(emb, labels, grid, tau=1.0):
    a = emb / emb.sum(dim=0, keepdim=True)
    return F.relu(tau - torch.stack([a[grp].mean(dim=0).max() for grp in labels]).min())


def divide_and_bind(emb, labels, grid):
    hw = emb.shape[-1]
    a = emb.view(emb.shape[0], *grid)
    tv = []
    for grp in labels:
        m = a[grp].mean(dim=0)
        m = (m / m.sum()) * hw
        tv.append((m[1:, :] - m[:-1, :]).abs().mean() + (m[:, 1:] - m[:, :-1]).abs().mean())
    return -1.0 * torch.stack(tv).min()


HEURISTICS = {"focus": focus, "attend_and_excite": attend_and_excite, "divide_and_bind": divide_and_bind}


def cost(maps, labels, grid, heuristic):
    """Controller.compute_cost for batch 1: a (1,) tensor."""
    return torch.stack([HEURISTICS[heuristic](block_mean(maps, grid), labels, grid)])


# --- the authors' code, for the side-by-side check ---------------------------------------------------------

def reference():
    """The authors' modules from FOCUS_SRC, or None."""
    src = os.environ.get("FOCUS_SRC")
    if not src:
        return None
    sys.path.insert(0, src)
    from src import controller  # imports src/losses.py (controller_loss and the rest)
    from src.sd3 import attention_processor, pipeline
    return {"Controller": controller.Controller, "SD3AttnProcessor": attention_processor.SD3AttnProcessor,
            "SD3ControllerPipeline": pipeline.SD3ControllerPipeline}


def same(name, ours, theirs, report):
    """Ours and theirs must be equal bit for bit (same shape, dtype and values)."""
    ours, theirs = ours.detach(), theirs.detach()
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, name
    assert torch.equal(ours, theirs), (name, (ours.double() - theirs.double()).abs().max().item())
    report.append(name)


def check_blur():
    """Our blur against torchvision's, where it is installed."""
    try:
        import torchvision
        from torchvision.transforms.functional import gaussian_blur
    except ImportError:
        return "torchvision not installed"
    x = torch.from_numpy(g.normal(31, (5, 32 * 32))).exp()
    for gh, gw in ((16, 16), (32, 32), (16, 24)):
        y = x[:, :gh * gw].contiguous()
        ref = gaussian_blur(y.view(-1, 1, gh, gw), kernel_size=3, sigma=1.0).view(y.shape)
        assert torch.equal(blur(y, gh, gw), ref), (gh, gw)
    return f"equal to torchvision {torchvision.__version__} gaussian_blur, bit for bit"


# --- part 1: costs on given maps ---------------------------------------------------------------------------

COST_CASES = [
    {"name": "two_single", "grid": [16, 16], "t5": [[1], [4]], "clip": [[2], [5]], "seed": 41},
    {"name": "two_multi", "grid": [16, 16], "t5": [[1, 2, 3, 4, 5], [8, 9, 10, 11]], "clip": [[2], [5]],
     "seed": 42},
    {"name": "three", "grid": [16, 16], "t5": [[1], [4], [8]], "clip": [[2], [5], [9]], "seed": 43},
    {"name": "one_subject", "grid": [16, 16], "t5": [[1, 2]], "clip": [[2, 3]], "seed": 44},
    {"name": "two_single_32x32", "grid": [32, 32], "t5": [[1], [4]], "clip": [[2], [5]], "seed": 45},
    {"name": "two_multi_16x24", "grid": [16, 24], "t5": [[1, 2], [5, 6, 7]], "clip": [[2, 3], [6, 7]],
     "seed": 46},
]
NBLOCKS = 3


def random_maps(seed, n_tok, n):
    """Positive maps of the size attention probabilities have: exp(1.5 z) rows scaled to sum to 0.3."""
    z = np.exp(1.5 * g.normal(seed, (NBLOCKS, n_tok, n)).astype(np.float64))
    return g.f32(0.3 * z / z.sum(axis=-1, keepdims=True))


def maps_cost_grad(maps, run):
    """run(list of per-block [n_tok, N] maps) -> (1,) cost; returns the cost and d cost / d maps."""
    p = torch.from_numpy(maps).requires_grad_(True)
    c = run(list(p.unbind(0)))
    c.backward()
    return c.detach(), p.grad


def gen_cost(_pipe, ref, report, _cap):
    d = g.fresh(os.path.join("focus", "cost"))
    listing = []
    for c in COST_CASES:
        rows, labels = subject_rows(c["t5"], c["clip"])
        grid = tuple(c["grid"])
        maps = random_maps(c["seed"], len(rows), grid[0] * grid[1])
        cd = os.path.join(d, c["name"])
        g.save(cd, "maps.npy", maps)
        for h in HEURISTICS:
            val, grad = maps_cost_grad(maps, lambda m: cost(m, labels, grid, h))
            assert torch.isfinite(val).all() and torch.isfinite(grad).all(), (c["name"], h)
            g.save(cd, h + "_cost.npy", g.f32(val))
            g.save(cd, h + "_grad.npy", g.f32(grad))
            if ref is not None and grid[0] == grid[1]:
                ctl = ref["Controller"](heuristic=h, t5_ids=c["t5"], clip_ids=c["clip"])
                assert torch.equal(ctl.token_groups[0], rows)
                assert all(torch.equal(a, b) for a, b in zip(ctl.label_groups[0], labels))

                def theirs(m, ctl=ctl):
                    ctl.storage[0] = m
                    return ctl.compute_cost()
                rv, rg = maps_cost_grad(maps, theirs)
                same(f"cost/{c['name']}/{h} cost", val, rv, report)
                same(f"cost/{c['name']}/{h} grad", grad, rg, report)
        listing.append({**c, "rows": rows.tolist(), "label_groups": [lg.tolist() for lg in labels],
                        "n_blocks": NBLOCKS, "shapes": {"maps": list(maps.shape)},
                        "heuristics": list(HEURISTICS), "reference_can_run": grid[0] == grid[1]})
    g.write_json(os.path.join(d, "cases.json"), listing)
    return len(listing)


# --- prompts and their subject positions ---------------------------------------------------------------------

def pieces(pipe, prompt):
    """The CLIP (BOS at 0) and T5 (no BOS) token pieces of prompt, up to and with the end token."""
    clip = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(prompt).input_ids)
    assert clip == pipe.tokenizer_2.convert_ids_to_tokens(pipe.tokenizer_2(prompt).input_ids)
    return {"clip": clip, "t5": pipe.tokenizer_3.convert_ids_to_tokens(pipe.tokenizer_3(prompt).input_ids)}


def check_subjects(pipe, c):
    """The pieces at each subject's positions spell its phrase (spaces dropped) in both tokenizations."""
    tok = pieces(pipe, c["prompt"])
    for k, phrase in enumerate(c["subjects"]):
        want = phrase.replace(" ", "").lower()
        assert "".join(tok["t5"][i] for i in c["t5"][k]).replace("\u2581", "").lower() == want, (c["name"], k)
        assert "".join(tok["clip"][i] for i in c["clip"][k]).replace("</w>", "") == want, (c["name"], k)
    return tok


def encode(pipe, prompt, negative_prompt, cfg):
    return pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_3=None, device="cpu", num_images_per_prompt=1,
                              do_classifier_free_guidance=cfg, negative_prompt=negative_prompt,
                              max_sequence_length=77)


# --- part 2: one captured transformer call -----------------------------------------------------------------

TRANSFORMER = {"prompt": "A red car and a blue bicycle on a street", "subjects": ["red car", "blue bicycle"],
               "t5": [[1, 2], [5, 6, 7]], "clip": [[2, 3], [6, 7]], "heuristic": "focus", "seed": 51,
               "timesteps": [1000.0, 500.5]}


def transformer_call(pipe, cap, x, t, pe, pp, rows, labels, heuristic):
    """With grad: the captured forward (16 x 16 patch grid), the cost and its gradient w.r.t. the latent x."""
    cap.rows, cap.on = rows, True
    leaf = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = pipe.transformer(hidden_states=leaf, timestep=t, encoder_hidden_states=pe, pooled_projections=pp,
                               return_dict=False)[0]
        maps = list(cap.maps)
        c = cost(maps, labels, (16, 16), heuristic)
        c.backward()
    cap.on, cap.maps = False, []
    return out.detach(), torch.stack(maps).detach(), c.detach(), leaf.grad


@torch.no_grad()
def gen_transformer(pipe, ref, report, cap):
    d = g.fresh(os.path.join("focus", "transformer"))
    c = TRANSFORMER
    tok = check_subjects(pipe, {"name": "transformer", **c})
    pe, _, pp, _ = encode(pipe, c["prompt"], None, False)
    assert pe.shape == (1, 77 + 77, 128)
    x = torch.from_numpy(g.normal(c["seed"], (1, 16, 32, 32)))
    rows, labels = subject_rows(c["t5"], c["clip"])
    for name, a in (("hidden_states", g.f32(x)), ("encoder_hidden_states", g.f32(pe)),
                    ("pooled_projections", g.f32(pp))):
        g.save(d, name + ".npy", a)
    listing = []
    for ts in c["timesteps"]:
        t = torch.tensor([ts], dtype=torch.float32)
        out, maps, val, grad = transformer_call(pipe, cap, x, t, pe, pp, rows, labels, c["heuristic"])
        plain = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=pe, pooled_projections=pp,
                                 return_dict=False)[0]
        assert torch.equal(out, plain)  # capturing leaves the forward unchanged
        sub = "t" + f"{ts:g}".replace(".", "_")
        for name, a in (("timestep", g.f32(t)), ("maps", g.f32(maps)), ("cost", g.f32(val)), ("grad", g.f32(grad))):
            g.save(os.path.join(d, sub), name + ".npy", a)
        if ref is not None:
            ctl = ref["Controller"](heuristic=c["heuristic"], t5_ids=c["t5"], clip_ids=c["clip"])
            for block in pipe.transformer.transformer_blocks:
                block.attn.set_processor(ref["SD3AttnProcessor"](ctl))
            ctl.activate_storage()
            leaf = x.clone().requires_grad_(True)
            with torch.enable_grad():
                pipe.transformer(hidden_states=leaf, timestep=t, encoder_hidden_states=pe, pooled_projections=pp,
                                 return_dict=False)
                rmaps = torch.stack(ctl.storage[0]).detach()
                rc = ctl.compute_cost()
                rc.backward()
            install(pipe, cap)
            same(f"transformer/{sub} maps", maps, rmaps, report)
            same(f"transformer/{sub} cost", val, rc, report)
            same(f"transformer/{sub} grad", grad, leaf.grad, report)
        listing.append({"name": sub, "timestep": ts, "files": ["timestep", "maps", "cost", "grad"],
                        "shapes": {"maps": list(maps.shape), "grad": list(grad.shape)}})
    g.write_json(os.path.join(d, "cases.json"),
                 {"inputs": {"hidden_states": "normal(PCG64 seed 51)", "encoder_hidden_states": "encode_prompt",
                             "pooled_projections": "encode_prompt", "max_sequence_length": 77},
                  **{k: c[k] for k in ("prompt", "subjects", "t5", "clip", "heuristic")},
                  "rows": rows.tolist(), "label_groups": [lg.tolist() for lg in labels], "grid": [16, 16],
                  "tokens": tok, "cases": listing})
    return len(listing)


# --- part 3: controlled pipeline runs ----------------------------------------------------------------------

HORSE = {"prompt": "A horse and a bear in a forest", "subjects": ["horse", "bear"], "t5": [[1], [4]],
         "clip": [[2], [5]]}
THREE = {"prompt": "A cat, a dog, and a bird on a sofa", "subjects": ["cat", "dog", "bird"],
         "t5": [[1], [4], [8]], "clip": [[2], [5], [9]]}
CARS = {k: TRANSFORMER[k] for k in ("prompt", "subjects", "t5", "clip")}
DOGS = {"prompt": "A dachshund and a corgi playing in a park", "subjects": ["dachshund", "corgi"],
        "t5": [[1, 2, 3, 4, 5], [8, 9, 10, 11]], "clip": [[2], [5]]}


def pcase(name, subj, seed, steps, guidance, size, lam, heuristic="focus"):
    return {"name": name, **subj, "negative_prompt": None, "seed": seed, "steps": steps, "guidance_scale": guidance,
            "width": size, "height": size, "max_sequence_length": 77, "heuristic": heuristic, "lambda": lam}


PIPE_CASES = [
    pcase("two_l4_128", HORSE, 0, 4, 4.5, 128, 4.0),
    pcase("three_l1_256", THREE, 1, 3, 4.5, 256, 1.0),
    pcase("multi_l4_256", CARS, 2, 3, 4.5, 256, 4.0),
    pcase("nocfg_multi_l4_128", DOGS, 3, 3, 1.0, 128, 4.0),
    pcase("full28_l1_128", HORSE, 4, 28, 4.5, 128, 1.0),
    pcase("lambda0_128", HORSE, 5, 3, 4.5, 128, 0.0),
    pcase("aae_l4_128", THREE, 6, 3, 4.5, 128, 4.0, "attend_and_excite"),
    pcase("dnb_l10_128", HORSE, 7, 3, 4.5, 128, 10.0, "divide_and_bind"),
]

# The existing plain golden our loop must reproduce, without control and with lambda 0 (non-square grid).
PLAIN = next(c for c in g.PIPE_CASES if c["name"] == "msl77_tall128x192")


@torch.no_grad()
def controlled(pipe, cap, c, control=True):
    """SD3ControllerPipeline.__call__ (output_type "latent") on diffusers 0.31.0's components: returns the
    noise, the per-step costs, latent gradients and control factors (float32 scalars), and the final latents."""
    cfg = c["guidance_scale"] > 1
    pe, npe, pp, npp = encode(pipe, c["prompt"], c["negative_prompt"], cfg)
    cond, cond_pooled = pe, pp
    if cfg:
        pe, pp = torch.cat([npe, pe], dim=0), torch.cat([npp, pp], dim=0)
    latents = pipe.prepare_latents(1, pipe.transformer.config.in_channels, c["height"], c["width"], pe.dtype,
                                   torch.device("cpu"), torch.Generator("cpu").manual_seed(c["seed"]))
    noise = latents.clone()
    grid = (latents.shape[2] // 2, latents.shape[3] // 2)
    if control:
        cap.rows, labels = subject_rows(c["t5"], c["clip"])
    costs, grads, factors = [], [], []
    pipe.scheduler.set_timesteps(c["steps"], device="cpu")
    for t in pipe.scheduler.timesteps:
        if control:
            with torch.enable_grad():
                cap.on = True
                latents = latents.requires_grad_(True)
                pipe.transformer(hidden_states=latents, timestep=t.expand(latents.shape[0]),
                                 encoder_hidden_states=cond, pooled_projections=cond_pooled, return_dict=False)
                val = cost(cap.maps, labels, grid, c["heuristic"])
                val.backward()
                grad = latents.grad
                cap.on, cap.maps = False, []
                latents = latents.detach().requires_grad_(False)
            costs.append(val.detach())
            grads.append(grad)
        inp = torch.cat([latents] * 2) if cfg else latents
        v = pipe.transformer(hidden_states=inp, timestep=t.expand(inp.shape[0]), encoder_hidden_states=pe,
                             pooled_projections=pp, return_dict=False)[0]
        if cfg:
            uncond, text = v.chunk(2)
            v = uncond + c["guidance_scale"] * (text - uncond)
        if control:
            t_nom = (1000 - t) / 1000
            sigma = 2 * (1 - t_nom + 1e-3) / (t_nom + 1e-3)
            w = c["lambda"] * sigma * (1 - t_nom)
            factors.append(w)
            v = v + w * grad
        latents = pipe.scheduler.step(v, t, latents, return_dict=False)[0]
    return noise, costs, grads, factors, latents


def check_plain(pipe, cap):
    """Our loop reproduces golden/pipeline/msl77_tall128x192 bit for bit, without control and with lambda 0."""
    src = os.path.join(g.GOLD, "pipeline", PLAIN["name"])
    want = {k: np.load(os.path.join(src, k + ".npy")) for k in ("noise", "latents")}
    for control in (False, True):
        c = {**PLAIN, "t5": [[4]], "clip": [[5]], "heuristic": "focus", "lambda": 0.0}
        noise, _, _, _, lat = controlled(pipe, cap, c, control)
        assert np.array_equal(g.f32(noise), want["noise"]) and np.array_equal(g.f32(lat), want["latents"]), control


@torch.no_grad()
def reference_run(pipe, ref, c):
    """The authors' SD3ControllerPipeline on the same components: noise, per-step costs, gradients, latents."""
    rp = ref["SD3ControllerPipeline"](**pipe.components)
    rp.set_progress_bar_config(disable=True)
    ctl = ref["Controller"](heuristic=c["heuristic"], lambda_scale=c["lambda"], t5_ids=c["t5"], clip_ids=c["clip"])
    noise, costs, leaves = [], [], []
    prepare, compute = rp.prepare_latents, ctl.compute_cost

    def capture_noise(*args, **kwargs):
        lat = prepare(*args, **kwargs)
        noise.append(lat.clone())
        return lat

    def capture_cost():
        val = compute()
        costs.append(val.detach().clone())
        return val

    def capture_leaf(_mod, _args, kwargs):
        if ctl.is_active():
            leaves.append(kwargs["hidden_states"])

    rp.prepare_latents, ctl.compute_cost = capture_noise, capture_cost
    hook = pipe.transformer.register_forward_pre_hook(capture_leaf, with_kwargs=True)
    try:
        lat = rp(c["prompt"], negative_prompt=c["negative_prompt"], height=c["height"], width=c["width"],
                 num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"], max_sequence_length=77,
                 generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="latent",
                 controller=ctl).images
    finally:
        hook.remove()
    return noise[0], costs, [x.grad for x in leaves], lat


def gen_pipeline(pipe, ref, report, cap):
    d = g.fresh(os.path.join("focus", "pipeline"))
    check_plain(pipe, cap)
    listing, results = [], {}
    for c in PIPE_CASES:
        tok = check_subjects(pipe, c)
        noise, costs, grads, factors, lat = controlled(pipe, cap, c)
        assert torch.isfinite(lat).all(), c["name"]
        pipe.set_progress_bar_config(disable=True)
        plain = pipe(c["prompt"], negative_prompt=c["negative_prompt"], height=c["height"], width=c["width"],
                     num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"], max_sequence_length=77,
                     generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="latent").images
        # lambda 0 is the plain pipeline, bit for bit; any other lambda changes the result.
        assert torch.equal(lat, plain) == (c["lambda"] == 0), c["name"]
        cost_steps = torch.cat(costs)
        cd = os.path.join(d, c["name"])
        for name, a in (("noise", noise), ("cost", cost_steps), ("grad0", grads[0]), ("latents", lat)):
            g.save(cd, name + ".npy", g.f32(a))
        results[c["name"]] = (noise, cost_steps, grads[0], lat)
        rows, labels = subject_rows(c["t5"], c["clip"])
        listing.append({**c, "rows": rows.tolist(), "label_groups": [lg.tolist() for lg in labels], "tokens": tok,
                        "shapes": {"noise": list(noise.shape), "cost": list(cost_steps.shape),
                                   "grad0": list(grads[0].shape), "latents": list(lat.shape)},
                        "timesteps": [float(t) for t in pipe.scheduler.timesteps],
                        "control_factors": [float(w) for w in factors], "grad0_absmax": float(grads[0].abs().max())})
    if ref is not None:
        for c in PIPE_CASES:
            noise, cost_steps, grad0, lat = results[c["name"]]
            rn, rc, rg, rl = reference_run(pipe, ref, c)
            for what, ours, theirs in (("noise", noise, rn), ("cost", cost_steps, torch.cat(rc)),
                                       ("grad0", grad0, rg[0]), ("latents", lat, rl)):
                same(f"pipeline/{c['name']} {what}", ours, theirs, report)
        install(pipe, cap)
    g.write_json(os.path.join(d, "cases.json"), listing)
    return len(listing)


PARTS = {"cost": gen_cost, "transformer": gen_transformer, "pipeline": gen_pipeline}


def main():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    parts = sys.argv[1:] or list(PARTS)
    ref = reference()
    print("blur:", check_blur())
    pipe = g.load_pipe()
    # diffusers 0.33.1 without accelerate keeps the stored BF16 matrices of the mixed-dtype fixture transformer
    # in BF16 despite torch_dtype; the cast is exact (a no-op with 0.31.0).
    pipe.transformer.to(torch.float32)
    for m in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        m.requires_grad_(False)
    cap = Capture()
    install(pipe, cap)
    report = []
    for p in parts:
        n = PARTS[p](pipe, ref, report, cap)
        print(f"focus {p}: {n} written")
    if ref is not None:
        print(f"side by side with {os.environ['FOCUS_SRC']} (diffusers {diffusers.__version__}): "
              f"{len(report)} comparisons, all bit-exact")


if __name__ == "__main__":
    main()
