"""The real SD3.5 tokenizer files as a fixture, and token-id goldens from transformers.

Copies the published tokenizer folders (byte for byte) from a directory holding them (argv[1],
default ../shared/real-sd35 from the repository root) into tests/fixtures/tiny-sd35-real/, then
writes tests/fixtures/golden/real_tokenizer/cases.json: for each prompt, the ids of
StableDiffusion3Pipeline's three tokenizers as encode_prompt calls them (CLIPTokenizer, slow;
T5TokenizerFast, rebuilt from spiece.model because tokenizer_config.json sets add_prefix_space).
Run by run_real.sh in the environment of requirements-real.txt.
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile

import tokenizers
import transformers
from transformers import CLIPTokenizer, T5TokenizerFast

import tokenizer_cases

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(ROOT, "tests", "fixtures", "tiny-sd35-real")
GOLD = os.path.join(ROOT, "tests", "fixtures", "golden", "real_tokenizer")
FILES = {
    "tokenizer": ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"],
    "tokenizer_2": ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"],
    "tokenizer_3": ["special_tokens_map.json", "spiece.model", "tokenizer.json", "tokenizer_config.json"],
}

# Every character that is whitespace to someone: Unicode White_Space (Rust's char::is_whitespace,
# the regex crate's \s, so lstrip/rstrip), Python's str.isspace (adds U+001C..U+001F), and
# look-alikes that are whitespace to neither (ZWSP, ZWNJ, ZWJ, word joiner, BOM, Mongolian vowel
# separator, Hangul filler, Braille blank).
WHITE_SPACE = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680] + list(range(0x2000, 0x200B)) + [
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
PY_ONLY = [0x1C, 0x1D, 0x1E, 0x1F]
NOT_SPACE = [0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0x180E, 0x3164, 0x2800]
SPACES = [chr(c) for c in WHITE_SPACE + PY_ONLY + NOT_SPACE]


def whitespace_cases():
    """Added tokens wrapped in each kind of space: either side, doubled, at the ends, adjacent."""
    out = []
    toks = ["<extra_id_0>", "<extra_id_99>", "</s>", "<pad>", "<unk>", "<|endoftext|>", "<|startoftext|>", "!"]
    for i, w in enumerate(SPACES):
        t = toks[i % len(toks)]
        out += [f"a{w}{t}{w}b", f"a{w}{w}{t}{w}{w}b", f"{w}{t}{w}", f"{t}{w}", f"{w}{t}",
                f"cat{w}<extra_id_1>dog", f"cat<extra_id_2>{w}dog", f"{w}x{w}<extra_id_3>{w}<extra_id_4>{w}y{w}"]
    # adjacent tokens, tokens inside words, CJK, combining marks, emoji
    out += [
        "<extra_id_0><extra_id_1>", "<extra_id_0> <extra_id_1>", "<extra_id_0>\u3000\u3000<extra_id_1>",
        "a<extra_id_0>b<extra_id_1>c", "<extra_id_0></s><pad><unk>", " </s> ", "\u00a0<pad>\u00a0",
        "猫<extra_id_0>犬", "猫\u3000<extra_id_0>\u3000犬", "東京 <extra_id_5> 写真", "서울\u2003<extra_id_6>\u2003부산",
        "e\u0301<extra_id_7>\u0301", "<extra_id_8>\u0301a", "a\u0301 <extra_id_9> \u0302b",
        "🐱<extra_id_10>🐶", "🐱 <extra_id_11> 🐶", "👩‍👩‍👧\u2009<extra_id_12>\u2009👍🏽",
        "<extra_id_100>", "<extra_id_-1>", "<extra_id_0", "extra_id_0>", "<EXTRA_ID_0>", "<extra_id_00>",
        "<extra_id_1000>", "<<extra_id_0>>", "<extra_id_0>" * 40, " <extra_id_0> " * 40,
        "a\x85<extra_id_0>\x85b", "\x85\x85<extra_id_0>\x85\x85", "<|endoftext|> <|startoftext|>",
        "<|ENDOFTEXT|>", "<|StartOfText|>", "wow!!<|endoftext|>!!", "! ! !", "a ! b", "\u3000!\u3000",
        "x\u200b<extra_id_0>\u200by", "x\ufeff<extra_id_0>\ufeffy", "x\u180e<extra_id_0>\u180ey",
        "\t\n\r <extra_id_0> \r\n\t", "", " ", "\u3000", "\x85",
    ]
    return out


# Added tokens with every flag combination, appended to the published added_tokens_decoder
# (tokenizer_config.json), for the flag goldens: (content, single_word, lstrip, rstrip, normalized, special).
FLAG_TOKENS = [
    ("<sw>", True, False, False, False, False),
    ("<ls>", False, True, False, False, False),
    ("<rs>", False, False, True, False, False),
    ("<all>", True, True, True, False, True),
    ("zq", True, False, False, True, False),
    ("\uff51x", False, False, False, True, False),  # fullwidth q: normalized (NFKC) it is "qx"
    ("Mixed", False, True, True, True, False),
]
FLAG_TEXTS = [
    "<sw>", "a<sw>b", "a <sw> b", "a<sw> b", "a <sw>b", "\u00e9<sw>", "<sw>\u0301", "_<sw>_", "1<sw>", "!<sw>!",
    "<sw><sw>", "<sw> <sw>", "a\u3000<sw>\u3000b", "<ls>", "a  <ls>b", "a\u2003\u2003<ls> b", "a\x85<ls>\x85b",
    "a\x1c<ls>\x1cb", "<rs>  a", "a <rs>\u00a0\u00a0b", "a <rs>\x1fb", "<ls><rs>", "x <rs> <ls> y",
    "x<all>y", "x <all> y", "x\t<all>\ty", "zq", "a zq b", "azqb", "ZQ", "\uff5a\uff51", "qx", "a\uff51x b",
    "mixed", "a  Mixed  b", "MIXED", "<extra_id_0> <sw> </s>", "cat<ls>dog<rs>bird", "\u732b<sw>\u732b",
    "\U0001f431 <all> \U0001f436", "a Mixed b", "a\u3000Mixed\u3000b", "a\x85Mixed\x85b", "a zq", "zq b",
]


def flag_entries(first_id):
    return [{"id": first_id + i, "content": c, "single_word": sw, "lstrip": ls, "rstrip": rs, "normalized": norm,
             "special": sp} for i, (c, sw, ls, rs, norm, sp) in enumerate(FLAG_TOKENS)]


# (folder, name, changes to tokenizer_config.json, whether FLAG_TOKENS go to tokenizer.json instead)
FLAG_RUNS = [
    ("tokenizer", "flags", {}, False),
    ("tokenizer_2", "flags", {}, False),
    ("tokenizer_2", "split_special_tokens", {"split_special_tokens": True}, False),
    ("tokenizer_3", "flags", {}, False),
    ("tokenizer_3", "split_special_tokens", {"split_special_tokens": True}, False),
    ("tokenizer_3", "add_prefix_space_false", {"add_prefix_space": False}, False),
    ("tokenizer_3", "legacy_false", {"legacy": False}, False),
    # Without add_prefix_space transformers loads tokenizer.json as it is, added tokens included.
    ("tokenizer_3", "tokenizer_json", {"add_prefix_space": None}, True),
]


def flag_run(tmp, folder, name, changes, in_json):
    """One FLAG_RUNS entry: the files it changes and the ids of FLAG_TEXTS through them."""
    first_id = 32100 if folder == "tokenizer_3" else 49408
    d = os.path.join(tmp, f"{folder}-{name}")
    os.makedirs(d)
    for n in FILES[folder]:
        shutil.copyfile(os.path.join(FIX, folder, n), os.path.join(d, n))
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
    run = {"folder": folder, "name": name}
    if in_json:
        tj = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
        run["added_tokens"] = tj["added_tokens"] + flag_entries(first_id)
        tj["added_tokens"] = run["added_tokens"]
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tj, f, ensure_ascii=False)
    else:
        for e in flag_entries(first_id):
            cfg["added_tokens_decoder"][str(e.pop("id"))] = e
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    if in_json:
        cfg.pop("added_tokens_decoder")
    run["config"] = cfg
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False)
    if folder == "tokenizer_3":
        tok = T5TokenizerFast.from_pretrained(d)
        call = dict(padding="max_length", max_length=256, truncation=True, add_special_tokens=True)
    else:
        tok = CLIPTokenizer.from_pretrained(d)
        call = dict(padding="max_length", max_length=77, truncation=True)
    for i, (c, *_) in enumerate(FLAG_TOKENS):
        assert tok.convert_tokens_to_ids(c) == first_id + i, (folder, name, c, tok.convert_tokens_to_ids(c))
    texts = FLAG_TEXTS + whitespace_cases()[:64]
    run["ids"] = [tok(t, **call).input_ids for t in texts]
    return run, texts


def flag_goldens(tmp):
    """golden/real_tokenizer/flags.json: each FLAG_RUNS entry with its files and ids."""
    runs = []
    for r in FLAG_RUNS:
        run, texts = flag_run(tmp, *r)
        runs.append(run)
    with open(os.path.join(GOLD, "flags.json"), "w", encoding="ascii") as f:
        json.dump({"texts": texts, "runs": runs}, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "real-sd35")
    # A file equal to one of an earlier folder (tokenizer_2's vocabulary and merges are
    # tokenizer's) becomes a link to it, as the hub's cache holds it.
    copied = {}
    for folder, names in FILES.items():
        os.makedirs(os.path.join(FIX, folder), exist_ok=True)
        for n in names:
            data = open(os.path.join(src, folder, n), "rb").read()
            dst = os.path.join(FIX, folder, n)
            if os.path.lexists(dst):
                os.remove(dst)
            if data in copied:
                os.symlink(os.path.join("..", *copied[data]), dst)
            else:
                with open(dst, "wb") as f:
                    f.write(data)
                copied[data] = (folder, n)
    # The rebuilt T5 tokenizer must be the published tokenizer.json, or the engine, which reads
    # tokenizer.json's vocabulary and charsmap, would not be what transformers runs.
    t5 = T5TokenizerFast.from_pretrained(os.path.join(FIX, "tokenizer_3"))
    built = json.loads(t5.backend_tokenizer.to_str())
    pub = json.load(open(os.path.join(FIX, "tokenizer_3", "tokenizer.json"), encoding="utf-8"))
    for k in ("normalizer", "pre_tokenizer", "model", "added_tokens", "post_processor"):
        assert built[k] == pub[k], f"converted tokenizer differs from tokenizer.json in {k}"
    clip_l = CLIPTokenizer.from_pretrained(os.path.join(FIX, "tokenizer"))
    clip_g = CLIPTokenizer.from_pretrained(os.path.join(FIX, "tokenizer_2"))
    texts = list(dict.fromkeys(whitespace_cases() + list(tokenizer_cases.cases())))
    os.makedirs(GOLD, exist_ok=True)
    with open(os.path.join(GOLD, "cases.json"), "w", encoding="ascii") as f:
        f.write("[\n")
        for i, text in enumerate(texts):
            # encode_prompt: _get_clip_prompt_embeds and _get_t5_prompt_embeds (max_sequence_length 256)
            row = {
                "text": text,
                "clip_l": clip_l(text, padding="max_length", max_length=77, truncation=True).input_ids,
                "clip_g": clip_g(text, padding="max_length", max_length=77, truncation=True).input_ids,
                "t5": t5(text, padding="max_length", max_length=256, truncation=True, add_special_tokens=True).input_ids,
            }
            f.write(json.dumps(row, ensure_ascii=True, separators=(",", ":")) + (",\n" if i + 1 < len(texts) else "\n"))
        f.write("]\n")
    with tempfile.TemporaryDirectory() as tmp:
        flag_goldens(tmp)
    meta = {
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "cases": len(texts),
        "files": {f"{d}/{n}": hashlib.sha256(open(os.path.join(FIX, d, n), "rb").read()).hexdigest()
                  for d, ns in FILES.items() for n in ns},
    }
    with open(os.path.join(GOLD, "index.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(texts)} cases, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")


if __name__ == "__main__":
    main()
