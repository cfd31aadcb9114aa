"""SMS consent keywords (R-OPT-1): is a whole inbound text STOP, START or HELP?

The spec's rule is exact matching of the whole message, trimmed, case-folded and stripped of
surrounding punctuation. A false opt-out silences a customer who never asked for it; a missed one
is a TCPA/CTIA violation. So the matcher is strict about *what the words are* (nothing but the
listed keywords, never a substring: "cancel my appointment", "stop by at 5", "S T O P" are ordinary
messages) and generous about *how a phone may have written them*. Decisions, with their reasons:

- Unicode NFKC first: full-width letters (U+FF21...), mathematical bold or script letters and
  ligatures are the same word to the person who typed them, and some keyboards and phones send them.
- Case: `str.casefold`, plus the Turkish dotted capital I and dotless small i folded to "i"
  ("QUİT" from a Turkish keyboard's caps); no English keyword letter is changed by that.
- Surrounding characters: stripped from both ends while they are punctuation (P*), symbols (S*,
  which includes most emoji and skin-tone modifiers), separators (Z*) or other (C*: control,
  format such as zero-width space/joiner and BOM, private use, and unassigned code points, which is
  how emoji newer than Python's Unicode database appear). A combining mark at an end goes with the
  character it is attached to: stripped after an emoji (the variation selector in "✋️", the keycap
  in "#️⃣"), kept after a letter ("STOP" + combining acute is "STOṔ", as its precomposed form is).
- Invisible format characters (Cf) and variation selectors inside the text are dropped:
  "ST<zero-width space>OP" and "stop"+VS16 read as STOP on the screen, and what the person sees is
  what they meant.
- Between the two words of STOP ALL and OPT OUT, any run of whitespace (spaces, tabs, line breaks,
  no-break and ideographic spaces) counts as the one space the spec writes: "stop  all" or "STOP" and
  "ALL" on two lines is unmistakably the keyword, and a compliance officer would honour it. Any
  Unicode dash (Pd) counts as the hyphen of OPT-OUT (U+2010 HYPHEN from smart punctuation).
- Nothing else is forgiven: letters spaced apart, other words, digits, internal punctuation or
  look-alike letters from other scripts (STOP typed with Cyrillic letters) do not match.

Pure: no I/O and no imports from the database or connectors, so every decision is unit-testable.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

Keyword = Literal["stop", "start", "help"]

#: The keywords exactly as SPEC R-OPT-1 spells them; the spelling is what the history row records.
KEYWORD_FAMILIES: dict[Keyword, tuple[str, ...]] = {
    "stop": (
        "STOP",
        "STOPALL",
        "STOP ALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "OPTOUT",
        "OPT OUT",
        "OPT-OUT",
        "REVOKE",
    ),
    "start": ("START", "UNSTOP", "YES", "SUBSCRIBE"),
    "help": ("HELP", "INFO"),
}

#: Longest message (after stripping its surrounding characters) that can still be a keyword. The
#: longest keyword, UNSUBSCRIBE, has 11 characters; 64 leaves room for generous whitespace or
#: invisible characters between words, and anything longer is a sentence. Checking it before the
#: Unicode work keeps that work bounded whatever size of message arrives.
MAX_KEYWORD_MESSAGE_CHARS = 64

#: Turkish I forms that case-folding leaves as something other than "i".
_TURKISH_I = str.maketrans({"\u0130": "i", "\u0131": "i"})


@dataclass(frozen=True)
class KeywordMatch:
    """A consent keyword found in a message: its family and its canonical (spec) spelling."""

    kind: Keyword
    keyword: str


_MATCHES: dict[str, KeywordMatch] = {
    spelling.casefold(): KeywordMatch(kind, spelling)
    for kind, spellings in KEYWORD_FAMILIES.items()
    for spelling in spellings
}


def classify_keyword(text: object) -> KeywordMatch | None:
    """The consent keyword a whole inbound message is, or None for an ordinary message.

    Anything but a string (None, bytes, numbers, JSON objects) is no keyword.
    """
    if not isinstance(text, str):
        return None
    core = _strip_surrounding("".join(char for char in text if not _is_variation_selector(char)))
    if not core or len(core) > MAX_KEYWORD_MESSAGE_CHARS:
        return None
    return _MATCHES.get(_fold(core))


def _fold(core: str) -> str:
    """The message reduced to the form the keyword table is written in (see the module docstring)."""
    text = unicodedata.normalize("NFKC", core)
    text = "".join(char for char in text if unicodedata.category(char) != "Cf")
    text = text.translate(_TURKISH_I).casefold()
    # Only characters that are themselves punctuation, symbols, ... surround the word: a letter or
    # digit whose compatibility form holds punctuation ("⒈" is "1.") stays part of the message.
    text = " ".join(text.split())
    return "".join("-" if unicodedata.category(char) == "Pd" else char for char in text)


def _is_surrounding(char: str) -> bool:
    """Punctuation, symbol, separator or other (control, format, private use, unassigned). A symbol
    is surrounding even when its compatibility form is letters ("™", "Ⓜ️", circled "ⓢ"): "STOP™️"
    is STOP with an emoji after it, and letters drawn as symbols ("ⓢⓣⓞⓟ") are not a keyword."""
    return unicodedata.category(char)[0] in "PSZC"


def _is_variation_selector(char: str) -> bool:
    """U+FE00 to U+FE0F and U+E0100 to U+E01EF: they pick how the character before them is drawn (emoji or
    text style), never which character it is, so "stop" + VS16 is the word the person sees."""
    code = ord(char)
    return 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF


def _is_mark(char: str) -> bool:
    return unicodedata.category(char)[0] == "M"


def _strip_surrounding(text: str) -> str:
    """`text` without its leading and trailing surrounding characters and their combining marks."""
    start = 0
    # A leading mark is attached to a stripped character before it, or to nothing at all.
    while start < len(text) and (_is_surrounding(text[start]) or _is_mark(text[start])):
        start += 1
    end = len(text)
    while end > start:
        # text[start] is no mark, so a trailing cluster of marks always has a base after start.
        base = end
        while _is_mark(text[base - 1]):
            base -= 1
        if not _is_surrounding(text[base - 1]):
            break
        end = base - 1
    return text[start:end]
