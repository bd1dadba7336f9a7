"""The deterministic list of strings behind tests/fixtures/golden/tokenizer/cases.json.

Hand-written edge cases first, then seeded programmatic mixes.  Only the texts live here; the ids
are computed by gen_goldens.py with the fixture tokenizers.
"""
import random

LONG = ("a highly detailed cinematic photograph of an ancient castle on a misty mountain at sunrise, "
        "volumetric lighting, golden hour, dramatic clouds, intricate stonework, lush green valleys, "
        "a winding river, flocks of birds, 8k uhd, sharp focus, masterpiece, trending on artstation, "
        "by greg rutkowski and alphonse mucha, oil painting, rich colors, soft shadows, depth of field")

HAND = [
    "", " ", "  ", "\t", "\n", "a", "A", "!", ".", "0", "9", "é", "猫", "😀", "\u00a0", "\u200b",
    "a photo of a cat", "A photo of a cat", "A PHOTO OF A CAT", "a  photo   of\ta\ncat",
    "  leading space", "trailing space  ", "\t\ttabs\tand\nnewlines\r\nand\rcarriage returns\n",
    "hello world!", "hello, world!!!", "Wow!! it's amazing!?", "!!!", "!a!b!c!", "a!", "!a",
    "what?!", "...", "--", "a-b_c.d,e;f:g", "(parentheses) [brackets] {braces} <angles>",
    "quotes \"double\" 'single' `back`", "#hashtag @mention $100 50% a&b a*b a+b a=b a|b a\\b a/b a~b a^b",
    "email: someone@example.com url: https://example.com/path?q=1&r=2#frag",
    "numbers 1234567890 3.14159 -42 +7 1e10 0x1F 1,000,000",
    "2024-05-31 12:34:56", "v1.2.3", "R2-D2 and C-3PO", "4k 8k 1080p", "x1 x2 x10 x100",
    "it's", "It's", "IT'S", "it'S", "don't", "DON'T", "we're", "We'RE", "they've", "THEY'VE", "i'm", "I'M",
    "you'll", "YOU'LL", "he'd", "HE'D", "cat's toy", "the cats' toys", "'s", "'t", "'re", "''", "'",
    "rock 'n' roll", "o'clock", "l'amour", "the dog's bone isn't the cat's",
    "<|endoftext|>", "<|startoftext|>", "a <|endoftext|> b", "a<|endoftext|>b", "<|startoftext|>hello<|endoftext|>",
    "<|ENDOFTEXT|>", "<|endoftext|><|endoftext|>", "<|endoftext", "|endoftext|>", "</s>", "<pad>", "<unk>",
    "a </s> b", "<extra_id_0>", "x<extra_id_5>y", "<extra_id_99> <extra_id_100>",
    "café", "cafe\u0301", "naïve", "nai\u0308ve", "résumé", "re\u0301sume\u0301", "Ångström", "A\u030angstro\u0308m",
    "über Zürich", "São Paulo", "crème brûlée", "jalapeño piñata", "Kraków", "Dvořák", "Ελληνικά", "ÉCOLE",
    "ﬁ ligature ﬂ", "ǅ ǈ ǋ", "ß straße STRASSE", "İstanbul ıi", "Ωmega µ micro", "½ ¼ ¾ ² ³ ⁴", "① ② ③",
    "東京タワーの夜景", "美しい風景写真", "猫と犬", "一只可爱的小猫在草地上玩耍", "中文，标点。符号！",
    "こんにちは世界", "カタカナ ひらがな", "ｶﾀｶﾅ", "서울의 밤 풍경", "고양이와 강아지", "한국어 텍스트",
    "مرحبا بالعالم", "القط الأسود", "नमस्ते दुनिया", "हिंदी पाठ", "Привет мир", "КРАСИВЫЙ ПОРТРЕТ",
    "Москва кошка", "Γειά σου Κόσμε", "αβγδε ΑΒΓΔΕ", "שלום עולם", "ภาษาไทย", "Tiếng Việt có dấu",
    "😀", "😀😃😄", "a 😀 b", "👍🏽", "👍🏻👍🏼👍🏽👍🏾👍🏿", "👨‍👩‍👧‍👦", "👩🏽‍💻", "🏳️‍🌈", "❤️", "🇯🇵🇺🇸", "cat🐱dog🐶",
    "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ", "ＡＢＣ１２３！？", "全角　スペース",
    "a\u00a0b", "a\u2002b\u2003c\u2009d", "a\u3000b", "a\u202fb", "a\u2028b\u2029c", "a\u0085b",
    "zero\u200bwidth\u200cjoiner\u200dx", "a\ufeffb", "soft\u00adhyphen", "a\u2060b",
    "ctrl\x01\x02\x03chars", "bell\x07tab\x0bvt\x0cff", "nul\x00byte", "del\x7fchar", "a\x1bb", "esc\x1b[31mred",
    "a\ufffdb", "\ufffd", "combining a\u0300\u0301\u0302", "e\u0301\u0301",
    "MiXeD CaSe TeXt", "UPPERCASE SHOUTING", "camelCaseWords", "snake_case_words", "kebab-case-words",
    "hello.world", "end.", "a,b,c", "a, b, c", "a ,b ,c",
    LONG, LONG.upper(), " ".join([LONG] * 3), "cat " * 100, "a" * 300, "a " * 300, "!" * 200,
    "1 2 3 4 5 6 7 8 9 10 " * 12, "猫" * 120, "😀" * 100, "supercalifragilisticexpialidocious " * 10,
    ", ".join(f"tag{i}" for i in range(120)),
]

WORDS = ("the a of cat dog photo portrait city night neon forest dragon castle robot astronaut ocean "
         "painting detailed cinematic lighting sunset mountain river flower girl boy old man woman red blue "
         "golden misty ancient futuristic cute scary huge tiny 8k hdr masterpiece style anime watercolor").split()
PIECES = ["café", "naïve", "Zürich", "東京", "猫", "写真", "こんにちは", "서울", "Привет", "Αθήνα", "مرحبا",
          "नमस्ते", "😀", "👍🏽", "👨‍👩‍👧", "ｆｕｌｌ", "it's", "DON'T", "we'RE", "<|endoftext|>", "!", "?!",
          "...", "(", ")", "[", "]", ",", ".", "-", "'", "\"", "123", "3.5", "#", "@", "&"]
SEPS = [" ", " ", " ", "  ", "\t", "\n", "", ", ", "\u00a0", "\u3000", "\u200b", " \n "]
CHARS = ("abcxyzABCXYZ0123456789 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\t\n"
         "éèêëàâäôöûüçñÅåØøßÆæœŒ" "αβγΩЖжЯя" "東京猫犬山川空花海" "あいうアイウ" "가나다" "ابت" "कखग"
         "😀🐱👍🏽❤️" "\u00a0\u2003\u3000\u200b\u200d\u0301\u0308\x01\x7f\ufeff" "ＡＢＣ１２３")


def cases():
    rng = random.Random(7)
    out = list(HAND)
    for _ in range(170):  # prompt-like word sequences, varied case, punctuation and separators
        n = rng.randint(1, 30)
        toks = []
        for _ in range(n):
            w = rng.choice(WORDS) if rng.random() < 0.75 else rng.choice(PIECES)
            r = rng.random()
            w = w.upper() if r < 0.1 else w.capitalize() if r < 0.25 else w
            toks.append(w)
            toks.append(rng.choice(SEPS))
        s = "".join(toks)
        if rng.random() < 0.2:
            s = rng.choice(SEPS) + s
        out.append(s)
    for _ in range(120):  # random character soup
        n = rng.randint(1, 40)
        out.append("".join(rng.choice(CHARS) for _ in range(n)))
    for _ in range(40):  # long prompts around the 77 / 256 token limits
        n = rng.randint(60, 260)
        out.append(" ".join(rng.choice(WORDS + PIECES[:12]) for _ in range(n)))
    for i in range(30):  # contractions in mixed case
        base = rng.choice(["it", "DON", "we", "They", "I", "you", "SHE", "cat"])
        suf = rng.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'LL", "'D", "'M"])
        out.append(f"{base}{suf} {rng.choice(WORDS)}{rng.choice(['', '!', '.', '?'])}")
    seen = set()
    uniq = []
    for s in out:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq
