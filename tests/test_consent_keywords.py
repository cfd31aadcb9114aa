"""Consent keywords (R-OPT-1): exact whole-message matching, generous only about how it was typed (pure)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from df_middleware.consent.keywords import (
    KEYWORD_FAMILIES,
    MAX_KEYWORD_MESSAGE_CHARS,
    Keyword,
    KeywordMatch,
    classify_keyword,
)

#: SPEC R-OPT-1, copied here by hand so the module's table is checked against the spec, not itself.
SPEC_KEYWORDS: dict[str, Keyword] = {
    "STOP": "stop",
    "STOPALL": "stop",
    "STOP ALL": "stop",
    "UNSUBSCRIBE": "stop",
    "CANCEL": "stop",
    "END": "stop",
    "QUIT": "stop",
    "OPTOUT": "stop",
    "OPT OUT": "stop",
    "OPT-OUT": "stop",
    "REVOKE": "stop",
    "START": "start",
    "UNSTOP": "start",
    "YES": "start",
    "SUBSCRIBE": "start",
    "HELP": "help",
    "INFO": "help",
}

#: Words that, next to a keyword, could spell a two-word keyword ("stop" + "all", "opt" + "out").
KEYWORD_PARTS = frozenset({"stop", "all", "opt", "out"})

ORDINARY_MESSAGES = [
    "see you this weekend",
    "weekend",
    "cancel my appointment",
    "Can you cancel it?",
    "stop by at 5",
    "don't stop",
    "please stop",
    "stop it",
    "S T O P",
    "s.t.o.p",
    "st op",
    "friend",
    "yes please",
    "Yes, Tuesday works",
    "yes 2pm",
    "help me with my order",
    "info@example.com",
    "more info",
    "the end",
    "end of day",
    "quit smoking",
    "stopping by",
    "stopped",
    "unstoppable",
    "startup",
    "restart",
    "helpful",
    "unsubscribe me please",
    "subscribed",
    "optout123",
    "opt - out",
    "opt_out",
    "stop-all",
    "stop all of it",
    "STOP 2",
    "2 STOP",
    "nonstop",
    "revoked",
    "",
]

#: Emoji as phones send them: variation selectors, skin tones, joiners, keycaps, flags.
EMOJI = ["🛑", "✋️", "👍🏽", "👨‍👩‍👧", "#️⃣", "🇺🇸", "❤️", "🙏", "\U0001fae8"]

surrounding = st.lists(
    st.one_of(
        # Punctuation, symbols, separators, controls, format characters (zero-width space, joiners,
        # BOM), private use and unassigned code points (emoji newer than Python's Unicode data).
        st.characters(categories=("P", "S", "Z", "Cc", "Cf", "Co", "Cn")),
        st.sampled_from(EMOJI),
        st.sampled_from([" ", "\t", "\n", "...", "!", "?", "¡", '"', "“", "”", "'", "\u200b", "\ufeff"]),
    ),
    max_size=6,
).map("".join)

whitespace_run = st.lists(
    st.sampled_from([" ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003"]), min_size=1, max_size=4
).map("".join)
dash = st.sampled_from(["-", "\u2010", "\u2011", "\u2013", "\u2014", "\ufe63", "\uff0d"])


@st.composite
def keyword_as_typed(draw: st.DrawFn, spelling: str) -> str:
    """`spelling` with random casing per character and random spacing or dash between its words."""
    cased = "".join(char.upper() if draw(st.booleans()) else char.lower() for char in spelling)
    if " " in cased:
        first, second = cased.split(" ")
        cased = first + draw(whitespace_run) + second
    if "-" in cased:
        first, second = cased.split("-")
        cased = first + draw(dash) + second
    return cased


def _approximate_fold(word: str) -> str:
    return unicodedata.normalize("NFKC", word).replace("\u0130", "i").replace("\u0131", "i").casefold()


other_word = st.text(st.characters(categories=("L", "N")), min_size=1, max_size=8).filter(
    lambda word: _approximate_fold(word) not in KEYWORD_PARTS
)
word_separator = st.sampled_from([" ", "  ", "\t", "\n", ", ", ". ", " - ", "! ", " & ", "/", "... "])


def test_the_keyword_table_is_exactly_the_spec() -> None:
    """R-OPT-1: the STOP, START and HELP families are the spec's lists, with nothing added."""
    table = {spelling: kind for kind, spellings in KEYWORD_FAMILIES.items() for spelling in spellings}
    assert table == SPEC_KEYWORDS


@pytest.mark.parametrize(("spelling", "kind"), sorted(SPEC_KEYWORDS.items()))
def test_each_keyword_as_the_spec_spells_it(spelling: str, kind: Keyword) -> None:
    """R-OPT-1: every listed keyword matches, named in its spec spelling for the history row."""
    assert classify_keyword(spelling) == KeywordMatch(kind, spelling)
    assert classify_keyword(spelling.lower()) == KeywordMatch(kind, spelling)


@given(data=st.data(), spelling=st.sampled_from(sorted(SPEC_KEYWORDS)))
def test_every_keyword_matches_under_any_casing_and_surroundings(spelling: str, data: st.DataObject) -> None:
    """R-OPT-1: casing, surrounding punctuation, whitespace and emoji never hide a keyword."""
    typed = data.draw(keyword_as_typed(spelling))
    message = data.draw(surrounding) + typed + data.draw(surrounding)
    match = classify_keyword(message)
    assert match is not None, message
    assert (match.kind, match.keyword) == (SPEC_KEYWORDS[spelling], spelling)


@pytest.mark.parametrize("message", ORDINARY_MESSAGES)
def test_ordinary_messages_are_not_keywords(message: str) -> None:
    """R-OPT-1: no substrings, no phrases: a message that is more than a keyword is an ordinary text."""
    assert classify_keyword(message) is None


@given(
    data=st.data(),
    spelling=st.sampled_from(sorted(SPEC_KEYWORDS)),
    others=st.lists(other_word, min_size=1, max_size=4),
)
def test_a_keyword_among_other_words_never_matches(
    spelling: str, others: list[str], data: st.DataObject
) -> None:
    """R-OPT-1: a keyword used as one word of a longer message ("stop by at 5") is no decision."""
    words = list(others)
    words.insert(data.draw(st.integers(0, len(words))), data.draw(keyword_as_typed(spelling)))
    message = words[0]
    for word in words[1:]:
        message += data.draw(word_separator) + word
    message = data.draw(surrounding) + message + data.draw(surrounding)
    assert classify_keyword(message) is None, message


@pytest.mark.parametrize(
    ("message", "keyword"),
    [
        ("Stop!", "STOP"),
        ("  STOP  ", "STOP"),
        ("stop.", "STOP"),
        ("¡STOP!", "STOP"),
        ("...stop...", "STOP"),
        ("“Stop”", "STOP"),
        ("(stop)", "STOP"),
        ("STOP\n", "STOP"),
        ("stop 🛑", "STOP"),
        ("STOP ✋️", "STOP"),
        ("🙏🏽 unsubscribe 🙏🏽", "UNSUBSCRIBE"),
        ("\ufeffSTOP\u200d", "STOP"),
        ("Yes!", "YES"),
        ("help?", "HELP"),
        ("Info.", "INFO"),
    ],
)
def test_surrounding_punctuation_whitespace_and_emoji_are_stripped(message: str, keyword: str) -> None:
    """R-OPT-1: "Stop!" is STOP; what surrounds the word is not part of it."""
    match = classify_keyword(message)
    assert match is not None
    assert match.keyword == keyword


@pytest.mark.parametrize(
    ("message", "keyword"),
    [
        ("\uff33\uff34\uff2f\uff30", "STOP"),  # full-width S T O P
        ("\uff53\uff54\uff4f\uff50\uff01", "STOP"),  # full-width s t o p !
        ("\U0001d412\U0001d413\U0001d40e\U0001d40f", "STOP"),  # mathematical bold S T O P
        ("QU\u0130T", "QUIT"),  # Turkish caps: dotted capital I
        ("\u0131nfo", "INFO"),  # Turkish dotless small i
        ("ST\u200bOP", "STOP"),  # a zero-width space inside is invisible
        ("stop\u00adall", "STOPALL"),  # so is a soft hyphen
        ("stop\ufe0f", "STOP"),  # a variation selector picks a style, not a letter
        ("S\ufe0eTOP", "STOP"),
        ("STOP\u2122\ufe0f", "STOP"),  # a letter-like emoji after the word is an emoji (™️)
        ("\u24c2\ufe0fSTOP", "STOP"),  # Ⓜ️ before it
    ],
)
def test_unicode_forms_of_a_keyword_match(message: str, keyword: str) -> None:
    """R-OPT-1: full-width and other compatibility forms (NFKC) and invisible characters are the word."""
    match = classify_keyword(message)
    assert match is not None
    assert match.keyword == keyword


@pytest.mark.parametrize(
    ("message", "keyword"),
    [
        ("stop all", "STOP ALL"),
        ("STOP  ALL", "STOP ALL"),
        ("stop\tall", "STOP ALL"),
        ("STOP\nALL", "STOP ALL"),
        ("stop\u00a0all", "STOP ALL"),
        ("STOPALL", "STOPALL"),
        ("opt out", "OPT OUT"),
        ("Opt   Out", "OPT OUT"),
        ("opt-out", "OPT-OUT"),
        ("OPT\u2010OUT", "OPT-OUT"),
        ("opt\u2013out", "OPT-OUT"),
        ("OPTOUT", "OPTOUT"),
        ("OptOut!", "OPTOUT"),
    ],
)
def test_two_word_keywords_tolerate_whitespace_runs_and_dashes(message: str, keyword: str) -> None:
    """R-OPT-1: any whitespace between STOP and ALL, or OPT and OUT, and any dash in OPT-OUT, match."""
    match = classify_keyword(message)
    assert match is not None
    assert (match.kind, match.keyword) == ("stop", keyword)


@pytest.mark.parametrize(
    "message",
    [
        "STOP\u0301",  # a combining accent on the P makes another letter
        "\u0421\u0422\u041e\u0420",  # STOP typed with Cyrillic look-alikes
        "st\u200b op",
        "stop.all",
        "opt--out",
        "1stop",
        "stop\u2488",  # "stop" followed by the digit-full-stop character
        "\U0001f1f8\U0001f1f9\U0001f1f4\U0001f1f5",  # regional indicator symbols are flags, not letters
        "\u24e2\u24e3\u24de\u24df",  # circled letters are symbols drawn as letters, not the word
    ],
)
def test_look_alikes_that_are_other_text_do_not_match(message: str) -> None:
    """R-OPT-1: only the spec's words match; accented letters, other scripts and inner punctuation do not."""
    assert classify_keyword(message) is None


@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "!!!", "🛑", "\u200b", 0, 1, True, 3.5, b"STOP", ["STOP"], {"text": "STOP"}],
)
def test_empty_and_non_string_input_is_no_keyword(value: object) -> None:
    """R-OPT-1: no text, or text with no word in it, is no consent decision."""
    assert classify_keyword(value) is None


def test_the_length_bound_applies_after_stripping() -> None:
    """R-OPT-1: a long message is no keyword, but a keyword in a long run of punctuation still is."""
    inner = MAX_KEYWORD_MESSAGE_CHARS - len("stopall")
    at_bound = "stop" + " " * inner + "all"
    assert len(at_bound) == MAX_KEYWORD_MESSAGE_CHARS
    assert classify_keyword(at_bound) == KeywordMatch("stop", "STOP ALL")
    assert classify_keyword("stop " + " " * inner + "all") is None
    assert classify_keyword("!" * 10_000 + "STOP" + " " * 10_000) == KeywordMatch("stop", "STOP")


@given(st.text())
def test_any_text_is_either_ordinary_or_a_listed_keyword(message: str) -> None:
    """R-OPT-1: arbitrary input never raises and never yields anything but a spec keyword."""
    match = classify_keyword(message)
    if match is not None:
        assert SPEC_KEYWORDS[match.keyword] == match.kind
