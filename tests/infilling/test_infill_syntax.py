"""Syntax-aware truncation keeps the longest middle that parses best; the parse check is tree-sitter's."""

import pytest

from infilling.syntax import cut_points, error_count, parses, truncate_middle

PREFIX = "def area(r):\n"
SUFFIX = "\n\nprint(area(2))\n"


def test_parse_check_and_error_count():
    assert parses("def f(x):\n    return x\n")
    assert not parses("def f(x):\n    return (x +\n")
    assert error_count("x = 1\n") == 0
    assert error_count("def f(:\n") >= 1


def test_a_middle_that_parses_is_kept():
    cut = truncate_middle(PREFIX, "    return 3.14 * r * r", SUFFIX)
    assert cut.middle == "    return 3.14 * r * r" and not cut.truncated and cut.parses


def test_runaway_generation_is_cut_at_the_last_good_line():
    # The model went on past the hole and began an unfinished statement.
    middle = "    a = r * r\n    return 3.14 * a\nprint(area(\n"
    cut = truncate_middle(PREFIX, middle, SUFFIX)
    assert cut.middle == "    a = r * r\n    return 3.14 * a\n" and cut.truncated and cut.parses
    assert parses(PREFIX + cut.middle + SUFFIX)


def test_cut_can_complete_a_broken_prefix_and_never_shortens_for_nothing():
    prefix, suffix = "x = (1 +\n", "\ny = 2\n"  # the prefix alone does not parse
    cut = truncate_middle(prefix, "2)\nz = [\n", suffix)
    assert cut.middle == "2)\n" and cut.truncated and cut.parses
    broken = truncate_middle("def f(:\n", "    pass\n", "\n")
    assert broken.middle == "    pass\n" and not broken.truncated and not broken.parses


def test_cut_points_are_line_ends():
    assert cut_points("a\nbc\n") == [0, 2, 5]
    assert cut_points("ab") == [0, 2]


def test_unknown_language_is_a_clear_error():
    with pytest.raises(ValueError, match="no tree-sitter grammar for 'cobol'"):
        parses("x", language="cobol")
