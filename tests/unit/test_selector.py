"""Calico selector language: parsing, matching, canonical text, errors."""

from __future__ import annotations

import pytest

from config.selector import SelectorError, parse_selector

LABELS = {"zone": "a", "rack": "r1", "routeReflector": "true", "example.com/tier": "edge"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("   ", True),
        ("all()", True),
        ("global()", True),
        ("has(zone)", True),
        ("has(missing)", False),
        ("!has(zone)", False),
        ("!has(missing)", True),
        ("zone == 'a'", True),
        ('zone == "b"', False),
        ("zone != 'b'", True),
        ("missing != 'b'", True),  # Calico: != is true when the label is absent
        ("zone in {'a', 'b'}", True),
        ("zone in {'b'}", False),
        ("zone in {}", False),
        ("missing in {'a'}", False),
        ("zone not in {'b', 'c'}", True),
        ("missing not in {'a'}", True),
        ("zone not in {'a'}", False),
        ("rack contains '1'", True),
        ("missing contains ''", False),
        ("rack starts with 'r'", True),
        ("rack ends with 'x'", False),
        ("has(zone) && rack == 'r1'", True),
        ("has(zone) && rack == 'r2'", False),
        ("has(nope) || rack == 'r1'", True),
        ("has(nope) || rack == 'r2'", False),
        ("!(zone == 'a' && rack == 'r1')", False),
        ("(has(nope) || has(zone)) && !has(nope)", True),
        ("has(nope) || has(zone) && has(nope)", False),  # && binds tighter than ||
        ("!!has(zone)", True),
        ("example.com/tier == 'edge'", True),
        ("has(example.com/tier)", True),
        ("routeReflector == 'true'", True),
        ("has(routeReflector)&&zone=='a'", True),
        ("has(global-peer)", False),
        ("inside == 'x'", False),  # a label starting with a keyword is still a label
        ("has == 'x'", False),
    ],
)
def test_matches(text, expected):
    assert parse_selector(text).matches(LABELS) is expected


@pytest.mark.parametrize(
    "text",
    ["zone == 'a'", "has(zone) && !has(x)", "a in {'x', 'y'} || b not in {'z'}",
     "!(a == 'x' || b == 'y') && c starts with 'p'", "all()", "k == 'it\"s'",
     "(a == 'x' || b == 'y') && c == 'z'"],
)
def test_str_reparses_to_the_same_selector(text):
    sel = parse_selector(text)
    assert parse_selector(str(sel)) == sel


def test_equal_selectors_compare_equal():
    assert parse_selector("zone in {'a','b'}") == parse_selector('zone in {"b", "a"}')
    assert hash(parse_selector("has(a)")) == hash(parse_selector(" has( a ) "))


@pytest.mark.parametrize(
    ("text", "pos", "fragment"),
    [
        ("has(zone", 8, "')' after has(key"),
        ("zone = 'a'", 5, "expected an operator"),
        ("zone == a", 8, "quoted string"),
        ("zone == 'a", 8, "unterminated"),
        ("zone in 'a'", 8, "'{'"),
        ("zone in {'a' 'b'}", 13, "',' or '}'"),
        ("zone not 'a'", 9, "'in' after 'not'"),
        ("has(zone) &&", 12, "end of selector"),
        ("has(zone) has(rack)", 10, "unexpected"),
        ("(has(zone)", 10, "')'"),
        ("all", 3, "'(' after all"),
        ("zone", 4, "expected an operator"),
        ("&& has(a)", 0, "label key"),
        ("zone starts 'a'", 12, "'with'"),
        ("has()", 4, "label key"),
        ("!= 'a'", 1, "label key"),
    ],
)
def test_errors_name_position_and_text(text, pos, fragment):
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    err = info.value
    assert err.pos == pos, str(err)
    assert fragment in err.reason, str(err)
    assert repr(text) in str(err) and f"position {pos}" in str(err)


def test_non_string_selector_is_an_error():
    with pytest.raises(SelectorError):
        parse_selector(None)  # type: ignore[arg-type]
