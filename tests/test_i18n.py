"""The pages' strings: every key in both languages with the same placeholders, every key the
pages use defined, and no English sentence in the Chinese strings."""

from __future__ import annotations

import re

from .helpers import REPO

WEB = REPO / "web_client"
KEY = re.compile(r"^\s{4}'([^']+)':\s*(.+?),?\s*$")
PLACEHOLDER = re.compile(r"\{(\w+)\}")
#: three English words in a row: a sentence that was not translated
ENGLISH_RUN = re.compile(r"\b[A-Za-z]{2,}(?:[ ,]+[A-Za-z]{2,}){2,}\b")


def _strings() -> dict[str, dict[str, str]]:
    text = (WEB / "js" / "i18n.js").read_text(encoding="utf-8")
    body = text[text.index("const STRINGS = {") :]
    en = body[body.index("\n  en: {") : body.index("\n  zh: {")]
    zh = body[body.index("\n  zh: {") : body.index("\n};")]
    out: dict[str, dict[str, str]] = {}
    for lang, block in (("en", en), ("zh", zh)):
        strings: dict[str, str] = {}
        for line in block.splitlines():
            m = KEY.match(line)
            if m:
                assert m.group(1) not in strings, f"{lang}: {m.group(1)} twice"
                strings[m.group(1)] = m.group(2)
        out[lang] = strings
    return out


def test_every_key_is_in_both_languages_with_the_same_placeholders() -> None:
    s = _strings()
    assert len(s["en"]) > 500  # the parser found the tables
    assert sorted(set(s["en"]) - set(s["zh"])) == [], "missing in zh"
    assert sorted(set(s["zh"]) - set(s["en"])) == [], "missing in en"
    differ = [
        k
        for k in s["en"]
        if set(PLACEHOLDER.findall(s["en"][k])) != set(PLACEHOLDER.findall(s["zh"][k]))
    ]
    assert differ == [], "placeholders differ"


def test_every_key_the_pages_use_is_defined() -> None:
    defined = set(_strings()["en"])
    used: set[str] = set()
    for html in WEB.glob("*.html"):
        used |= set(re.findall(r'data-i18n(?:-[a-z-]+)?="([^"]+)"', html.read_text("utf-8")))
    for js in (WEB / "js").glob("*.js"):
        # literal keys only: t('a.b') and has('a.b'); keys built at run time are checked by has()
        used |= set(re.findall(r"\b(?:t|has)\('([a-zA-Z][\w.]*)'", js.read_text("utf-8")))
    assert sorted(used - defined) == []


def test_the_chinese_strings_carry_no_english_sentence() -> None:
    english = {
        k: v for k, v in _strings()["zh"].items() if ENGLISH_RUN.search(PLACEHOLDER.sub("", v))
    }
    assert english == {}
