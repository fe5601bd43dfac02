"""The token counter: the fast form counts exactly what the piece-by-piece definition counts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentledger.projections.tokens import _approx_tokens_by_piece, approx_tokens

PIECES = st.sampled_from(
    [
        "a",
        "word",
        "tokenization",
        "x" * 13,
        "7",
        "12345",
        " ",
        "  ",
        "\n",
        " \n ",
        "\t",
        ".",
        "é",
        "—",
        "{",
        '"k":',
        "naïve",
        "Ⅻ",
        "٣",
        "\u00a0",
        "\r\n",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(PIECES, max_size=60).map("".join))
def test_fast_count_equals_the_definition_on_mixed_text(text: str) -> None:
    assert approx_tokens(text) == _approx_tokens_by_piece(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fast_count_equals_the_definition_on_any_text(text: str) -> None:
    assert approx_tokens(text) == _approx_tokens_by_piece(text)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=300))
def test_fast_count_equals_the_definition_on_ascii_text(text: str) -> None:
    # ASCII text takes its own path (str.translate and split instead of the regexes).
    assert approx_tokens(text) == _approx_tokens_by_piece(text)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(max_codepoint=127), max_size=20),
            st.sampled_from(["…", "—", "é", "naïve", "Ⅻ", "٣", "\u00a0", "\u2003", "𝟙", "\ud800"]),
        ),
        max_size=30,
    ).map("".join)
)
def test_fast_count_equals_the_definition_on_mostly_ascii_text(text: str) -> None:
    # Beyond ASCII, symbols take the ASCII path as "?" would; Unicode digits and spaces
    # (٣, 𝟙, no-break and em spaces) keep the regex path.
    assert approx_tokens(text) == _approx_tokens_by_piece(text)


def test_known_counts() -> None:
    assert approx_tokens("") == 0
    assert approx_tokens("hello world") == 2
    assert approx_tokens("internationalization") == 5
    assert approx_tokens("a\n\nb") == 3
    assert approx_tokens("12345") == 2
