#!/usr/bin/env python3
"""Deterministic generator of varied test strings for tokenizer parity (>= 2,000 strings), committed as
strings.json so that every machine tests the same inputs (`gen_strings.py` rewrites it; `load()` reads it).

Categories: English prose (from /usr/share/common-licenses and comments in /usr/include, plus generated
sentences), C source from /usr/include headers, numbers of many lengths, CJK, emoji (ZWJ sequences, skin
tones, flags, keycaps), other scripts (Arabic, Devanagari, Hebrew, Thai, Cyrillic, Greek, combining marks),
runs of spaces/tabs/newlines incl. \\r\\n, special tokens inside text, leading/trailing whitespace, very long
words, and random mixtures of assigned code points.

Excluded on purpose (documented differences between regex engines, not tokenizer bugs): U+0085, U+180E and
U+FEFF, which JavaScript's \\s treats differently from PCRE2/Oniguruma; unassigned code points (Unicode
versions differ between engines); surrogates (not valid UTF-8)."""
import glob
import os
import random
import re
import sys
import unicodedata

EXCLUDED = {0x85, 0x180E, 0xFEFF}

WORDS = ("the of and to in is was for that with as on by it at from this be are an or which have not "
         "but had his they were their one all there been has when who more will would can no if out so "
         "what up about into than them its only other time new some could these two may first then do "
         "any like my now over such our man me even most made after also did many before must through "
         "tokenizer model training attention expert routing latent gradient weights inference server "
         "don't it's we're they've I'm you'll she'd Hello WORLD CamelCase snake_case kebab-case").split()
SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
            "<｜tool▁sep｜>", "<｜tool▁calls▁begin｜>", "<｜fim▁hole｜>", "<｜place▁holder▁no▁5｜>", "<|EOT|>"]
NEAR_SPECIALS = ["<｜begin▁of▁sentence", "<｜User", "<|User|>", "<｜end▁of▁sentence｜", "｜>", "<｜",
                 "<｜▁pad▁｜", "<think>", "</think>"]
CJK = ["数字和中文混合测试。", "今天天气很好，我们去公园散步吧！", "深度学习模型的训练需要大量的数据。",
       "日本語のテキストを処理します。", "カタカナとひらがなの混在テスト", "東京タワーは333メートルです。",
       "한국어 문장도 포함합니다.", "人工智能（AI）正在改变世界。", "「引用」と『二重引用』", "龥龤鿿㐀𠀀𪛖"]
EMOJI = ["😀", "👍", "👍🏽", "👋🏿", "👨‍👩‍👧‍👦", "👩🏽‍💻", "🏳️‍🌈", "❤️", "🇯🇵", "🇺🇸", "1️⃣", "#️⃣",
         "🧑🏻‍🤝‍🧑🏿", "🐈‍⬛", "😶‍🌫️", "✨", "🚀", "🤖", "🎉🎉🎉", "©️", "™", "♥"]
SCRIPTS = ["مرحبا بالعالم، هذا اختبار.", "السَّلَامُ عَلَيْكُمْ", "नमस्ते दुनिया, यह एक परीक्षण है।",
           "हिन्दी में संख्याएँ १२३४५", "שלום עולם", "สวัสดีชาวโลก", "Привет, мир! Это тест.",
           "Γειά σου Κόσμε", "Ελληνικά: αβγδε ΑΒΓΔΕ", "e\u0301 a\u0308 n\u0303 (combining)",
           "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f",
           "Tiếng Việt có dấu", "ñandú über straße façade", "ﬁ ﬂ ﬀ ligatures", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
           "ᚠᛇᚻ᛫ᛒᛦᚦ", "ⅷ Ⅻ ½ ¾ ² ³", "∑∫∂√∞ ≠ ≤ ≥", "ა ბ გ ქართული", "Հայերեն", "አማርኛ"]
WS = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", " \n", "\n ", "\u00a0", "\u3000",
      "\u2028", "\u2003", " \t \n", "\r", "\x0b", "\x0c"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "--", "—", "–", "“", "”", "«", "»", "¿", "¡", "•"]


def _read(path, limit=400_000):
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _corpora():
    prose = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p):
            prose.append(_read(p))
    headers = sorted(glob.glob("/usr/include/*.h"))[:200]
    code = [_read(p, 100_000) for p in headers]
    comments = []
    for c in code:
        comments += re.findall(r"/\*(.*?)\*/", c, re.S)
    return [t for t in prose if t], [t for t in code if t], [t for t in comments if len(t) > 20]


def _ok_char(cp):
    if cp in EXCLUDED or 0xD800 <= cp <= 0xDFFF:
        return False
    cat = unicodedata.category(chr(cp))
    return cat not in ("Cn", "Cs", "Co")


def _random_char(rng):
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0x97F),
              (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2100, 0x22FF), (0x2E80, 0x2FDF),
              (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xF900, 0xFAFF), (0xFE30, 0xFFEF),
              (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF), (0x1D400, 0x1D7FF), (0x0, 0x1F)]
    while True:
        lo, hi = rng.choice(ranges)
        cp = rng.randint(lo, hi)
        if _ok_char(cp):
            return chr(cp)


def _slice(rng, text, lo, hi):
    if len(text) <= lo:
        return text
    n = rng.randint(lo, min(hi, len(text)))
    i = rng.randint(0, len(text) - n)
    return text[i:i + n]


def _sentence(rng):
    n = rng.randint(3, 18)
    words = [rng.choice(WORDS) for _ in range(n)]
    words[0] = words[0].capitalize()
    s = " ".join(words)
    if rng.random() < 0.3:
        s += rng.choice([",", ";", ":"]) + " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
    return s + rng.choice([".", "!", "?", "...", ""])


def _number(rng):
    k = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 16, 20, 25, 32, 40, 64])
    digits = "".join(rng.choice("0123456789") for _ in range(k))
    form = rng.randrange(8)
    if form == 0:
        return digits
    if form == 1:
        return f"{digits}.{rng.randint(0, 99999)}"
    if form == 2:
        return f"{int(digits):,}" if digits else "0"
    if form == 3:
        return f"-{digits}e{rng.randint(-30, 30)}"
    if form == 4:
        return f"The year {rng.randint(1000, 2100)} had {digits} items"
    if form == 5:
        return f"0x{rng.getrandbits(64):x} {rng.getrandbits(32)}"
    if form == 6:
        return f"{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}:{rng.randint(1, 65535)}"
    return "v" + ".".join(str(rng.randint(0, 20)) for _ in range(3)) + f" ({digits}%)"


def generate(seed=20240601):
    rng = random.Random(seed)
    prose, code, comments = _corpora()
    out = []
    # English prose
    for _ in range(300):
        out.append(_slice(rng, rng.choice(prose), 20, 600) if prose else _sentence(rng))
    for _ in range(150):
        out.append(" ".join(_sentence(rng) for _ in range(rng.randint(1, 4))))
    for _ in range(100):
        out.append(_slice(rng, rng.choice(comments), 10, 400) if comments else _sentence(rng))
    # Source code
    for _ in range(250):
        out.append(_slice(rng, rng.choice(code), 20, 800) if code else "int main(void) { return 0; }")
    out += ["def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
            "const x = {a: 1, 'b': [2, 3]};", "SELECT * FROM t WHERE id=42;", "fn main() { println!(\"hi\"); }",
            "<div class=\"x\">&amp;&lt;</div>", "https://example.com/path?q=1&r=two#frag", "user@example.org",
            "C:\\Users\\name\\file.txt", "$HOME/.config/**/*.json", "a+=b;c-=d;e*=f;g/=h;", "x->y::z<T>()"]
    # Numbers
    for _ in range(200):
        out.append(_number(rng))
    out += ["".join(str(i % 10) for i in range(n)) for n in range(1, 41)]
    # CJK
    for _ in range(150):
        parts = [rng.choice(CJK) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.5:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice([_sentence(rng), _number(rng), " ", "\n"]))
        out.append("".join(parts))
    # Emoji
    for _ in range(150):
        k = rng.randint(1, 6)
        s = ""
        for _ in range(k):
            s += rng.choice(EMOJI) + rng.choice(["", "", " ", "\n", rng.choice(WORDS), " " + rng.choice(WORDS) + " "])
        out.append(s)
    # Other scripts and combining marks
    for _ in range(200):
        parts = [rng.choice(SCRIPTS) for _ in range(rng.randint(1, 3))]
        out.append(rng.choice([" ", "", "\n", " — "]).join(parts))
    # Whitespace runs
    for _ in range(200):
        s = ""
        for _ in range(rng.randint(1, 8)):
            s += rng.choice(WS) * rng.randint(1, 4) + rng.choice(WORDS + PUNCT + ["", "", "12"])
        out.append(s)
    # Special tokens inside text
    for _ in range(180):
        parts = []
        for _ in range(rng.randint(1, 5)):
            r = rng.random()
            if r < 0.4:
                parts.append(rng.choice(SPECIALS))
            elif r < 0.55:
                parts.append(rng.choice(NEAR_SPECIALS))
            else:
                parts.append(rng.choice([_sentence(rng), rng.choice(WS), rng.choice(CJK), rng.choice(EMOJI), "x"]))
        out.append("".join(parts))
    # Leading / trailing whitespace
    for _ in range(120):
        out.append(rng.choice(WS) * rng.randint(1, 3) + _sentence(rng) + rng.choice(WS) * rng.randint(0, 3))
    # Very long words
    for n in [100, 257, 1000, 3000, 10000, 20000]:
        out.append("a" * n)
        out.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n)))
    out += ["supercalifragilisticexpialidocious" * 30, "Donaudampfschifffahrtsgesellschaftskapitän" * 10,
            "ab" * 2000, "🚀" * 500, "漢" * 1000, " " * 5000, "\n" * 3000, "!" * 2000, "1" * 1000,
            "x" * 500 + " " + "y" * 500, "_" * 3000, "ﷺ" * 50, "é" * 1000]
    # Punctuation-heavy
    for _ in range(80):
        out.append("".join(rng.choice(PUNCT + WORDS + [" "]) for _ in range(rng.randint(3, 30))))
    # Random mixtures of assigned code points
    for _ in range(250):
        out.append("".join(_random_char(rng) for _ in range(rng.randint(1, 40))))
    # Edge cases
    out += ["", " ", "a", "\n", "\r\n", "'s", "'S", "I'M", "don't", "'", "''", "x'll", "A'VE", "\t\n\r ", "!!", "  a",
            "a  ", "\u00a0a", "\u3000日本"]
    return out


def invalid_utf8_cases():
    """(prefix, bad bytes, suffix): prefix ends in a letter, suffix starts with a space, bad is invalid."""
    bads = [b"\xff", b"\xfe\xff", b"\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xc0\xaf",
            b"\xf8\x88\x80\x80\x80", b"\xff" * 7, b"\xc3\x28", b"\xa0\xa1"]
    out = []
    for i, b in enumerate(bads):
        out.append(("Hello" + "abc" * i, b, " world and more text 123"))
    return out


FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "strings.json")


def load():
    """The committed test strings (tests/tokenizer/strings.json): the same inputs on every machine."""
    import json
    with open(FIXTURE, encoding="utf-8") as f:
        return json.load(f)


if __name__ == "__main__":
    # Regenerates the committed fixture from this machine's files (then review and commit the diff).
    import json
    s = generate()
    with open(FIXTURE, "w", encoding="utf-8") as f:
        json.dump(s, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(len(s), "strings,", sum(len(x.encode()) for x in s), "bytes ->", FIXTURE, file=sys.stderr)
