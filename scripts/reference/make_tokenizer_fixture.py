#!/usr/bin/env python3
"""Writes tests/fixtures/clip_tokenizer/open_clip_tokens.json: the token ids open_clip gives for a
few hundred strings, which tests/tokenizer.rs compares with gapmeter's ClipTokenizer token for
token (src/features/text.rs), and src/features/text/html5_entities.json, the named character references
that Python's html.unescape decodes (html.entities.html5), which ClipTokenizer's cleaning embeds.

* `cases`: text, open_clip.tokenize(text)[0] without its zero padding (`tokens`, context length
  77) and the tokenizer's encode(text) (`bpe`, no start/end tokens, not truncated).
* `context_cases`: a few strings tokenized at other context lengths (truncation keeps the
  end-of-text token in the last position).
* `unreproduced`: strings whose cleaning gapmeter does not reproduce (ftfy's mojibake repair);
  recorded with open_clip's ids so the test can say how many happen to match, never asserted.

Needs open_clip_torch (its tokenizer module only: ftfy, regex and torch), e.g. the reference
venv: "$(scripts/reference/setup.sh)" scripts/reference/make_tokenizer_fixture.py
"""
import argparse
import html.entities
import json
import platform
import random
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "clip_tokenizer" / "open_clip_tokens.json"
ENTITIES = ROOT / "src" / "features" / "text" / "html5_entities.json"
SEED = 15

CONDITIONS = ["day", "night", "foggy", "rainy", "snowy", "sunny", "overcast", "dusk", "dawn",
              "twilight", "cloudy", "stormy", "hazy", "misty", "bright", "dark", "wet",
              "icy", "desert", "urban", "rural", "indoor", "outdoor", "synthetic", "real",
              "rendered", "cartoon", "sketch", "painting", "low-light", "sun-lit", "night-time"]
TEMPLATES = ["a photo of a {} scene", "a photo of a {} scene.", "A PHOTO OF A {} SCENE",
             "a blurry photo of a {} road", "an image taken at {}", "{} driving scene",
             "a {}, busy street with cars", "itap of a {} scene", "a photo of the {} sky"]


def hand_written():
    s = []
    for t in TEMPLATES:
        for c in CONDITIONS:
            s.append(t.format(c))
    s += [
        # punctuation and symbols
        "hello, world!", "what?!", "wait...", "a...b", "(parenthesis)", "[brackets]",
        "{braces}", "foo/bar", "c++ code", "e-mail", "#hashtag", "@user", "100%", "$5.99",
        "a_b_c", "1,000,000", "3.14159", "--dash--", "~tilde~", "`backtick`", "semi;colon",
        "col:on", "x = y + z", "email@example.com", "https://example.com/path?q=1&r=2",
        "!!!", "!?", "?!?!", "...", "---", "***", "a-b-c", "a.b.c", "\"double quoted\"",
        "'single quoted'", "a photo of a dog.", "A photo of a dog!", "<html> tag",
        "a < b > c", "50/50", "24/7", "9:41 am", "5'11\"", "→ arrow ←", "• bullet", "© 2024",
        "™ ® ℃ ℉", "€100 £50 ¥1000", "±0.5", "×÷", "§ ¶", "° degrees", "¿qué?", "¡hola!",
        # numbers
        "2024", "1st 2nd 3rd 4th", "123456789", "0.5", "-42", "1e10", "½ ¼ ¾", "x² y³",
        "٣ ١٢", "Ⅻ Ⅳ", "٠١٢٣٤٥٦٧٨٩", "一二三", "0", "00", "007",
        # contractions and apostrophes
        "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "DON'T",
        "can't", "won't", "'s'", "o'clock", "rock 'n' roll", "the dog's bone", "dogs'",
        "y'all", "'tis", "'''", "it''s", "I'M YOU'LL HE'D", "the 90's", "'d'll're've",
        # accents and combining marks
        "café", "naïve", "résumé", "Zürich", "São Paulo", "Ångström", "déjà vu", "piñata",
        "façade", "cafe\u0301", "A\u030angstro\u0308m", "e\u0301e\u0300e\u0302",
        "Ω ohm \u2126", "\u212b angstrom sign", "ﬀ", "straße", "STRASSE", "Œuvre",
        "Ægir", "Dvořák", "Łódź", "İstanbul", "ı dotless", "Ǆemal",
        # other scripts
        "東京の夜景", "北京的雾天", "한국어 문장", "こんにちは世界", "Москва ночью",
        "Привет, мир!", "ПРИВЕТ", "مرحبا بالعالم", "صورة لمشهد ليلي", "שלום עולם",
        "ΟΔΟΣ", "Σίσυφος", "ΣΑΣ ΣΑΣ", "ὈΔΥΣΣΕΎΣ", "नमस्ते दुनिया", "สวัสดีชาวโลก",
        "ქართული", "Հայերեն", "ᚠᚢᚦ", "ʻokina", "Tiếng Việt", "ꦗꦮ", "𝔉𝔯𝔞𝔨𝔱𝔲𝔯",
        "𝐛𝐨𝐥𝐝", "ⓒⓘⓡⓒⓛⓔⓓ",
        # emoji
        "🌧️ rainy day", "👍", "🇺🇸 flag", "👨‍👩‍👧‍👦 family", "❤️", "☀️ sunny",
        "emoji🙂in text", "👋🏽 wave", "🚗🚕🚙", "a photo of a 🌙 scene", "🏳️‍🌈",
        # HTML entities
        "&amp;", "rock &amp; roll", "&lt;tag&gt;", "&quot;quoted&quot;", "&#39;", "&#x27;s",
        "a&nbsp;b", "caf&eacute;", "&copy; 2024", "&amp;amp;", "&amp;amp;amp;",
        "&amp;amp;amp;amp;", "AT&T", "this&not that", "&copy", "&notit;", "&EACUTE;",
        "P&EACUTE;REZ", "&#128512;", "&#0;", "&#x80;", "&#150;", "&#x1F600;", "&bogus;",
        "a < b &amp; c", "&ldquo;hi&rdquo;", "<b>&ldquo;hi&rdquo;</b>", "&#65;&#66;",
        "&frac12;", "&Aacute;", "&ampx", "&amp;lt;", "&#xD800;", "&#99999999999;",
        "&#1;x", "&#13;x", "&#x110000;", "&hellip;", "&mdash;", "&nbsp;&nbsp;x", "&",
        "& &; &#; &#x;", "&AMP;", "&AMP", "&szlig;", "&SZLIG;", "&NTILDE;", "&nTILDE;",
        "fish &amp chips", "&lt", "&gt;&gt;&gt;", "&apos;", "&#x2019;s", "&#8217;s",
        # curly quotes and similar
        "\u201cquoted\u201d", "\u2018single\u2019", "it\u2019s", "don\u2019t",
        "\u201breversed\u201a", "\u201elow\u201c", "\u02bcokina", "«guillemets»",
        "\u2039single\u203a", "\u2032prime\u2033", "\u300ccorner\u300d", "\u201fhigh\u201d",
        # ligatures
        "ﬁne", "ﬂower", "oﬀice", "ﬃx", "ﬄ", "ĳs", "Ĳssel", "ǆ", "ǈ", "ﬅ", "ﬆ", "ŉ",
        # fullwidth and halfwidth
        "ＡＢＣ", "１２３", "ｈｅｌｌｏ\u3000ｗｏｒｌｄ", "ｶﾀｶﾅ", "ｶﾞｷﾞ", "！？", "＂ｑ＂",
        "ﾟ", "￥￡", "ﾠ", "ￂ",
        # whitespace
        "  leading", "trailing   ", "multiple   spaces", "tabs\tand\nnewlines",
        "\r\n windows", "\u00a0nbsp", "em\u2003space", "\u3000ideographic",
        "zero\u200bwidth", "line\u2028sep", "para\u2029sep", "next\x85line", "\x0b\x0cvt ff",
        "fs\x1cgs\x1drs\x1eus\x1f", "a\u1680b", "a\u202fb", "a\u205fb", "a\u180eb",
        "\n\n\na\n\n\n",
        # control characters
        "\x00null", "\x07bell", "\x1b[31mred\x1b[0m", "\ufeffBOM", "word\u2060joiner",
        "zw\u200dj", "\u206adeprecated", "\ufffcobject", "\x7fdel", "rtl\u200fmark",
        "\U000e0067tag", "\ufff9anno\ufffb",
        # special tokens in the text
        "<start_of_text>", "<end_of_text>", "<|startoftext|>", "<|endoftext|>",
        "hello<end_of_text>world", "<START_OF_TEXT>", "<<start_of_text>>",
        # case
        "HELLO World", "iPhone", "McDonald's", "ÉCOLE", "ΣΊΣΥΦΟΣ", "ǅ", "ẞ", "Ꭰ",
        # empty
        "", " ", "\n", "\t", "\u3000",
    ]
    # truncation boundaries: "a" is one token, so n of them give n + 2 ids
    for n in [73, 74, 75, 76, 77, 100]:
        s.append(" ".join(["a"] * n))
    s += [
        "a photo of " * 40,
        "supercalifragilisticexpialidocious" * 5,
        "a" * 1000,
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
        "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
        "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure "
        "dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur.",
        "東京" * 60,
        "🌧️" * 50,
        "&amp;" * 100,
    ]
    return s


def random_strings(rng, n):
    """Seeded strings over ASCII and a few accented letters, CJK and Cyrillic, for BPE coverage
    beyond the hand-written cases."""
    alphabets = [
        "abcdefghijklmnopqrstuvwxyz     ",
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"-()/&",
        "aeiouéèêëàâäôöûüçñß  ",
        "的一是不了人我在有他这为之大来以个中上们 ",
        "абвгдежзийклмнопрстуфхцчшщъыьэюя ",
    ]
    out = []
    for _ in range(n):
        alpha = rng.choice(alphabets)
        length = rng.randint(1, 60)
        out.append("".join(rng.choice(alpha) for _ in range(length)))
    return out


UNREPRODUCED = [
    # ftfy's fix_encoding repairs UTF-8 read as Windows-1252 / Latin-1 (mojibake).
    "cafÃ©", "Ã¼ber", "â€œquotedâ€\x9d", "donâ€™t", "SchÃ¶ne GrÃ¼ÃŸe",
    # C1 controls inside mojibake
    "\x93quoted\x94",
]


def load_open_clip_tokenizer():
    """open_clip's version and its tokenizer module. Importing the package needs torchvision and
    timm as well; where they are missing, the two module files are loaded on their own (the
    tokenizer needs only ftfy, regex and torch)."""
    try:
        import open_clip
        from open_clip import tokenizer

        return open_clip.__version__, tokenizer
    except ImportError:
        import importlib.util

        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise
        pkg = Path(list(spec.submodule_search_locations)[0])

        def load(name):
            s = importlib.util.spec_from_file_location(f"_open_clip_{name}", pkg / f"{name}.py")
            module = importlib.util.module_from_spec(s)
            s.loader.exec_module(module)
            return module

        return load("version").__version__, load("tokenizer")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=str(FIXTURE))
    p.add_argument("--entities", default=str(ENTITIES))
    args = p.parse_args()

    import ftfy
    import regex

    oc_version, oc_tok = load_open_clip_tokenizer()

    tok = oc_tok._tokenizer

    def case(text, context_length=oc_tok.DEFAULT_CONTEXT_LENGTH):
        row = oc_tok.tokenize([text], context_length=context_length)[0].tolist()
        while row and row[-1] == 0:
            row.pop()
        return {"text": text, "tokens": row, "bpe": tok.encode(text)}

    strings = hand_written() + random_strings(random.Random(SEED), 200)
    seen = set()
    cases = []
    for s in strings:
        if s not in seen:
            seen.add(s)
            cases.append(case(s))
    context_cases = []
    for text in ["a photo of a night scene", " ".join(["a"] * 20), "", "🌧️ rainy day"]:
        for length in [1, 2, 3, 5, 8, 16]:
            c = case(text, length)
            c["context_length"] = length
            context_cases.append(c)
    doc = {
        "generator": "scripts/reference/make_tokenizer_fixture.py",
        "open_clip_version": oc_version,
        "ftfy_version": ftfy.__version__,
        "regex_version": regex.__version__,
        "python_version": platform.python_version(),
        "unicodedata_version": unicodedata.unidata_version,
        "context_length": oc_tok.DEFAULT_CONTEXT_LENGTH,
        "sot": tok.sot_token_id,
        "eot": tok.eot_token_id,
        "cases": cases,
        "context_cases": context_cases,
        "unreproduced": [case(s) for s in UNREPRODUCED],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, ensure_ascii=True, indent=None, separators=(",", ":")) + "\n")
    print(f"make_tokenizer_fixture: {len(cases)} cases, open_clip {oc_version} -> {out}",
          file=sys.stderr)

    entities = {
        "source": "Python's html.entities.html5 (the WHATWG HTML standard's named character "
                  f"references), Python {platform.python_version()}; written by "
                  "scripts/reference/make_tokenizer_fixture.py",
        "entities": dict(sorted(html.entities.html5.items())),
    }
    ent = Path(args.entities)
    ent.parent.mkdir(parents=True, exist_ok=True)
    ent.write_text(json.dumps(entities, ensure_ascii=True, indent=0) + "\n")
    print(f"make_tokenizer_fixture: {len(entities['entities'])} entities -> {ent}", file=sys.stderr)


if __name__ == "__main__":
    main()
