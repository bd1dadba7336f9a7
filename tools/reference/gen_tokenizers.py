"""Build the fixture tokenizers (tokenizer/, tokenizer_2/, tokenizer_3/) of tests/fixtures/tiny-sd35.

tokenizer/ and tokenizer_2/ carry OpenAI's real CLIP BPE (taken from the open_clip_torch wheel, whose
path is given as argv[1]); tokenizer_3/ is a small SentencePiece Unigram model trained here on a
deterministic synthetic corpus and wrapped as T5TokenizerFast.  Not for model weights or goldens.
"""
import gzip
import io
import json
import os
import random
import shutil
import sys
import tempfile
import zipfile

import sentencepiece as spm
from transformers import CLIPTokenizer, T5TokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "tiny-sd35")

T5_VOCAB = 2000


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def read_bpe(wheel):
    with zipfile.ZipFile(wheel) as z:
        data = gzip.decompress(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8")
    lines = data.split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    assert len(merges) == 48894
    return [tuple(m.split()) for m in merges]


def build_clip(merges):
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    tmp = tempfile.mkdtemp()
    vocab_json = json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False)
    merges_txt = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(vocab_json)
    with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(merges_txt)
    for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        d = os.path.join(OUT, sub)
        shutil.rmtree(d, ignore_errors=True)
        tok = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"),
                            pad_token=pad, model_max_length=77)
        tok.save_pretrained(d)
        # save_pretrained re-sorts vocab.json by key; keep OpenAI's id order as the hub files do.
        # tokenizer_2's are the same files: links to tokenizer's, as the hub's cache holds them.
        for name, text in (("vocab.json", vocab_json), ("merges.txt", merges_txt)):
            os.remove(os.path.join(d, name))
            if sub == "tokenizer":
                with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                    f.write(text)
            else:
                os.symlink(os.path.join("..", "tokenizer", name), os.path.join(d, name))
    shutil.rmtree(tmp)


WORDS = """
a an the of in on at with and or for to from by under over above below near behind between
photo photograph portrait painting drawing sketch illustration render image picture poster
cat dog bird horse fish lion tiger bear wolf fox rabbit owl eagle dragon unicorn robot astronaut
man woman child girl boy person people king queen knight wizard witch warrior soldier farmer
city town village castle house tower bridge street road river lake ocean sea beach mountain hill
forest tree flower garden field desert island sky cloud sun moon star planet galaxy space night
red orange yellow green blue purple pink brown black white gray grey golden silver colorful
big small tiny huge giant little old young ancient modern futuristic beautiful ugly cute scary
happy sad angry calm quiet loud bright dark light shadow glow neon sunset sunrise morning evening
highly detailed intricate sharp focus cinematic lighting dramatic soft hard volumetric studio
trending artstation unreal engine octane render hdr 4k 8k uhd masterpiece best quality realistic
oil watercolor acrylic pencil charcoal ink digital art concept style anime manga cartoon comic
wearing holding sitting standing running flying swimming walking dancing reading eating sleeping
hat coat dress shirt shoes glasses sword shield book cup table chair window door car train ship
rain snow fog storm wind fire water ice stone wood metal glass paper gold crystal smoke steam
is are was were be been being has have had do does did will would can could should may might
it its this that these those there here what which who whom whose when where why how all any
very really quite too so not no yes only just also even still again ever never always often
one two three four five six seven eight nine ten hundred thousand first second third last next
don't can't won't isn't aren't it's he's she's we're they're you're i'm i've you've we'll they'd
""".split()

ACCENTED = """café naïve résumé über Zürich São Paulo crème brûlée façade jalapeño piñata
Ångström smörgåsbord Kraków Dvořák München Gödel élève déjà vu señor mañana coöperate
Москва кошка собака город река небо солнце красивый портрет
Αθήνα γάτα σκύλος ουρανός ήλιος θάλασσα
東京 猫 犬 山 川 空 花 海 夜 星 月 美しい 風景 写真
こんにちは ありがとう さくら ねこ いぬ カメラ アニメ
서울 고양이 강아지 하늘 바다 사진
""".split()

# Seen only a handful of times, so that character_coverage < 1 drops them to <unk>.
RARE = ["ǂ", "ʬ", "ꙮ", "ᚠ", "⸘"]


def corpus_lines(merges):
    # Extra real-looking English words: whole-word BPE merges of the CLIP vocabulary.
    extra = []
    for a, b in merges[2000:30000]:
        w = (a + b)[:-4] if b.endswith("</w>") else ""
        if len(w) >= 3 and w.isascii() and w.isalpha():
            extra.append(w)
    extra = extra[::3]
    rng = random.Random(20240531)
    lines = []
    for _ in range(12000):
        n = rng.randint(3, 18)
        words = [rng.choice(WORDS) if rng.random() < 0.6 else rng.choice(extra) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words) + 1), rng.choice(ACCENTED))
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 2025)))
        s = " ".join(words)
        if rng.random() < 0.3:
            s = s.capitalize()
        s += rng.choice([".", ",", "!", "?", "", ";", ":", " -", "..."])
        if rng.random() < 0.1:
            s = "(" + s + ")"
        lines.append(s)
    for w in ACCENTED:
        lines.append(" ".join([w] * 5))
    for i, c in enumerate(RARE):
        lines.append("rare " + c)
    return lines


def build_t5(merges):
    d = os.path.join(OUT, "tokenizer_3")
    shutil.rmtree(d, ignore_errors=True)
    tmp = tempfile.mkdtemp()
    model = io.BytesIO()
    # Trained from an iterator into memory so that no temporary path is recorded in the proto.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines(merges)), model_writer=model,
        model_type="unigram", vocab_size=T5_VOCAB,
        normalization_rule_name="nmt_nfkc", character_coverage=0.999,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=1, shuffle_input_sentence=False, minloglevel=2,
    )
    prefix = os.path.join(tmp, "spiece")
    with open(prefix + ".model", "wb") as f:
        f.write(model.getvalue())
    tok = T5TokenizerFast(vocab_file=prefix + ".model", extra_ids=100)
    tok.save_pretrained(d)
    shutil.rmtree(tmp)
    # save_pretrained records add_prefix_space, which would make from_pretrained ignore tokenizer.json
    # and re-convert spiece.model; the hub's T5 configs do not carry it, so drop it.
    cfg_path = os.path.join(d, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    del cfg["add_prefix_space"]
    cfg["model_max_length"] = 512
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return len(tok)


def main():
    wheel = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    merges = read_bpe(wheel)
    build_clip(merges)
    n = build_t5(merges)
    print("tokenizers written; T5 vocab", n)


if __name__ == "__main__":
    main()
