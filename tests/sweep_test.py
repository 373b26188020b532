from __future__ import annotations

from pathlib import Path

import pytest

from git_expegit.sweep import LIMIT
from git_expegit.sweep import SweepError
from git_expegit.sweep import expand
from tests.conftest import expegit

# The sections form: the original Orchestra grammar -----------------------------------------


def test_seed_example_joins_with_one_space_and_keeps_the_empty_alternative():
    assert expand(" --param¤first;second¤--flag;") == [
        " --param first --flag",
        " --param first ",  # the empty last alternative still joins with " "
        " --param second --flag",
        " --param second ",
    ]


def test_seed_repeats_are_innermost():
    assert expand("--lr¤0.1;0.01", repeat=2) == ["--lr 0.1", "--lr 0.1", "--lr 0.01", "--lr 0.01"]


def test_ascii_spelling_is_the_same_grammar():
    assert expand(" --param|first;second|--flag;") == expand(" --param¤first;second¤--flag;")
    assert expand("--lr|0.1;0.01", 2) == expand("--lr¤0.1;0.01", 2)


def test_first_section_varies_slowest():
    assert expand("a;b|c;d|e;f") == [
        "a c e", "a c f", "a d e", "a d f", "b c e", "b c f", "b d e", "b d f",
    ]


def test_only_the_last_section_is_trimmed():
    assert expand(" a ; b ¤ c ; d ") == [" a  c", " a  d", " b  c", " b  d"]


def test_sections_take_commas_quotes_and_parentheses_literally():
    assert expand("--layers 64,64|'(1)';f(x)") == ["--layers 64,64 '(1)'", "--layers 64,64 f(x)"]
    # Quoted, a comma or a parenthesis after KEY= is no key sweep: runaway's split drops the
    # quotes later, as the original's shell did.
    assert expand("--x='a,b'|c;\"range(2)\"") == ["--x='a,b' c", '--x=\'a,b\' "range(2)"']


def test_without_a_section_mark_a_semicolon_still_separates_alternatives():
    # The original grammar needs no ¤ for one section: a;b is two executions.
    assert expand("a;b") == ["a", "b"]
    assert expand("--lr 0.1; --lr 0.01", repeat=2) == ["--lr 0.1"] * 2 + ["--lr 0.01"] * 2
    assert expand("--msg=don't; echo \"hi\"") == ["--msg=don't", 'echo "hi"']


def test_an_empty_alternative_is_a_run_without_those_parameters():
    assert expand("--flag;") == ["--flag", ""]
    assert expand(";") == ["", ""]
    assert expand("--a¤;x") == ["--a ", "--a x"]


def test_a_quoted_semicolon_keeps_the_key_form():
    assert expand("--sep=';' --s=1,2") == ["--sep=; --s=1", "--sep=; --s=2"]
    assert expand("echo ';'") == ["echo ';'"]  # a plain string


MIXED = ("{word!r} is a key sweep (KEY=A,B), which cannot be mixed with sections (A;B and ¤ "
         "or |); write the expression in one form, or quote the ',' or '(' to keep it literal")


@pytest.mark.parametrize(
    ("expression", "column", "word"),
    [
        ("--a=1,2 |x;y", 1, "--a=1,2"),
        ("x;y --a=range(3)", 5, "--a=range(3)"),
        ("a¤zip(--b=1,2)", 3, "zip(--b=1,2)"),
        ("--x=1,2 a,b;c", 1, "--x=1,2"),
        ("--a ¤ --b='x',y", 7, "--b='x',y"),
        ("--a=1,2 'x;y", 1, "--a=1,2"),  # a quote left open quotes nothing
    ],
)
def test_mixing_key_sweeps_and_sections_is_refused_at_the_swept_word(
    expression: str, column: int, word: str
):
    with pytest.raises(SweepError) as caught:
        expand(expression)
    assert (caught.value.column, caught.value.reason) == (column, MIXED.format(word=word))


def test_mixing_both_section_separators_points_at_the_first_bar():
    with pytest.raises(SweepError) as caught:
        expand("--a¤1;2 --b|3")
    assert caught.value.column == 12
    assert caught.value.reason == "'¤' and '|' cannot be mixed; use one of them"
    assert str(caught.value) == "column 12: '¤' and '|' cannot be mixed; use one of them"


# Plain strings ---------------------------------------------------------------------------------


def test_plain_string_is_one_execution_exactly_as_written():
    assert expand("  --lr 0.1   --fast ") == ["  --lr 0.1   --fast "]
    assert expand("--msg=don't echo \"hi\"", repeat=3) == ["--msg=don't echo \"hi\""] * 3


# Key sweeps ------------------------------------------------------------------------------------


def test_key_sweeps_combine_first_axis_slowest_and_keep_literals_in_place():
    assert expand("--lr=0.1,0.01 --bs=16,32 --fast") == [
        "--lr=0.1 --bs=16 --fast",
        "--lr=0.1 --bs=32 --fast",
        "--lr=0.01 --bs=16 --fast",
        "--lr=0.01 --bs=32 --fast",
    ]
    assert expand("train --lr=1,2 --fast   -v") == [
        "train --lr=1 --fast -v",
        "train --lr=2 --fast -v",
    ]


def test_key_sweep_repeats_are_innermost():
    assert expand("--lr=1,2", repeat=3) == ["--lr=1"] * 3 + ["--lr=2"] * 3


def test_keys_need_no_dashes_and_values_may_hold_equals():
    assert expand("lr=1,2 -s=a,b") == ["lr=1 -s=a", "lr=1 -s=b", "lr=2 -s=a", "lr=2 -s=b"]
    assert expand("--x=a=b,c") == ["--x=a=b", "--x=c"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("--seed=range(3)", ["--seed=0", "--seed=1", "--seed=2"]),
        ("seed=range(2,5)", ["seed=2", "seed=3", "seed=4"]),
        ("s=range(1, 8, 3)", ["s=1", "s=4", "s=7"]),
        ("s=range( 5 , -5 , -4 )", ["s=5", "s=1", "s=-3"]),
        ("s=range(+1,2)", ["s=1"]),
    ],
)
def test_range_forms_follow_python(expression: str, expected: list[str]):
    assert expand(expression) == expected


def test_zip_advances_together_and_counts_as_one_axis():
    assert expand("zip(--lr=0.1,0.01 --bs=16,32) --seed=1,2") == [
        "--lr=0.1 --bs=16 --seed=1",
        "--lr=0.1 --bs=16 --seed=2",
        "--lr=0.01 --bs=32 --seed=1",
        "--lr=0.01 --bs=32 --seed=2",
    ]
    assert expand("--a=x,y zip( --b=range(2) --c=p,q ) --d") == [
        "--a=x --b=0 --c=p --d",
        "--a=x --b=1 --c=q --d",
        "--a=y --b=0 --c=p --d",
        "--a=y --b=1 --c=q --d",
    ]


def test_single_quotes_make_text_literal_and_are_removed():
    assert expand("--name='a,b'") == ["--name=a,b"]
    assert expand("--name='a,b' --s=1,2") == ["--name=a,b --s=1", "--name=a,b --s=2"]
    assert expand("--tag='x,y',z") == ["--tag=x,y", "--tag=z"]
    assert expand("--x='',1") == ["--x=", "--x=1"]
    assert expand("--f='g(1)' --s=1,2") == ["--f=g(1) --s=1", "--f=g(1) --s=2"]
    assert expand("--sep=';',',' --s=1") == ["--sep=; --s=1", "--sep=, --s=1"]


def test_quoted_text_that_a_shell_would_split_stays_quoted():
    assert expand("--name='a b',c") == ["'--name=a b'", "--name=c"]
    assert expand("--msg='say \"hi\"' --s=1,2") == [
        "'--msg=say \"hi\"' --s=1",
        "'--msg=say \"hi\"' --s=2",
    ]


def test_literal_words_without_quotes_are_kept_as_written():
    assert expand('--title="x" $HOME --s=1,2') == [
        '--title="x" $HOME --s=1',
        '--title="x" $HOME --s=2',
    ]


def test_large_sweeps_up_to_the_limit():
    result = expand("--a=range(1000) --b=range(100)")
    assert len(result) == LIMIT == 100_000
    assert result[0] == "--a=0 --b=0"
    assert result[101] == "--a=1 --b=1"
    assert result[-1] == "--a=999 --b=99"


# Errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "repeat", "reason"),
    [
        ("--a=range(1000) --b=range(101)", 1, "expands to 101000 executions; the limit is 100000"),
        ("--a=range(1000) --b=range(100)", 2, "expands to 200000 executions; the limit is 100000"),
        ("a;b;c;d;e|" * 8, 1, "expands to 390625 executions; the limit is 100000"),
        ("plain", LIMIT + 1, "expands to 100001 executions; the limit is 100000"),
        ("--a=range(10000000000000000000000)", 1,
         "expands to 10000000000000000000000 executions; the limit is 100000"),
    ],
)
def test_the_limit_is_checked_before_building(expression: str, repeat: int, reason: str):
    with pytest.raises(SweepError) as caught:
        expand(expression, repeat)
    assert (caught.value.column, caught.value.reason) == (1, reason)


@pytest.mark.parametrize("expression", ["", "   ", "\t\n"])
def test_empty_expression(expression: str):
    with pytest.raises(SweepError) as caught:
        expand(expression)
    assert (caught.value.column, caught.value.reason) == (1, "empty expression")
    assert str(caught.value) == "column 1: empty expression"


@pytest.mark.parametrize("repeat", [0, -1])
def test_repeat_below_one_is_a_value_error(repeat: int):
    with pytest.raises(ValueError, match="repeat must be at least 1"):
        expand("--lr=1,2", repeat)


EMPTY_VALUE = "empty value; quote it ('') to mean one"
KEY_FIRST = "a swept word needs a KEY= before its values (--lr=0.1,0.01); quote a literal ','"
PARENTHESIS = (
    "unexpected '('; parentheses belong to KEY=range(...) and zip(...) only, quote a literal '('"
)
RANGE_ARITY = "range() takes 1 to 3 integers: STOP, START,STOP or START,STOP,STEP"


@pytest.mark.parametrize(
    ("expression", "column", "reason"),
    [
        # empty alternatives: the column where the missing value belongs
        ("--lr=0.1,,0.2", 10, EMPTY_VALUE),
        ("--lr=0.1,", 10, EMPTY_VALUE),
        ("--lr=,0.1", 6, EMPTY_VALUE),
        ("a --lr=0.1,0.2, b", 16, EMPTY_VALUE),
        # commas and keys
        ("--lr 0.1,0.01", 9, KEY_FIRST),
        ("a,b=1", 2, KEY_FIRST),
        ("=1,2", 1, "missing KEY before '='"),
        ('--x=a"b,c', 6, "double quotes cannot appear in a swept word; use single quotes"),
        # ranges
        ("--x=range(0)", 5, "range(0) is empty"),
        ("--x=range(5, 2)", 5, "range(5, 2) is empty"),
        ("--x=range()", 5, RANGE_ARITY),
        ("--x=range(  )", 5, RANGE_ARITY),
        ("--x=range(1,2,3,4)", 5, RANGE_ARITY),
        ("--x=range(1,,3)", 13, "empty range() argument"),
        ("--x=range(1, 2,)", 16, "empty range() argument"),
        ("--x=range(a)", 11, "range() argument 'a' is not an integer"),
        ("--x=range(1, 2.5)", 14, "range() argument '2.5' is not an integer"),
        ("--x=range(1, 9, 0)", 17, "range() step cannot be 0"),
        ("--x=range(1" + "0" * 5000 + ")", 11, "range() argument is too large"),
        ("--x=range(3", 10, "'(' is never closed"),
        ("--x=range((3))", 11, "unexpected '(' inside range(...)"),
        ("--x=range(3)y", 13, "unexpected 'y' after ')'; add a space"),
        # functions and parentheses
        ("--x=foo(1)", 5, "unknown function 'foo'; only range(...) can follow '='"),
        ("--x=zip(1)", 5, "unknown function 'zip'; only range(...) can follow '='"),
        ("--x=(1,2)", 5, PARENTHESIS),
        ("echo $(date)", 7, PARENTHESIS),
        ("--x=a,b)", 8, "unmatched ')'"),
        (") --x=a,b", 1, "unmatched ')'"),
        # quotes
        ("--a=1,2 'x", 9, "unclosed quote"),
        ("--a='1,2", 5, "unclosed quote"),
        # zip
        ("zip(--lr=0.1,0.01 --bs=16,32,64)", 5,
         "zip() needs as many values everywhere: --lr has 2, --bs has 3"),
        ("--a=1,2 zip(--b=1,2,3 --c=4,5 --d=6,7,8)", 23,
         "zip() needs as many values everywhere: --c has 2, --b has 3"),
        ("zip(--a=1,2 zip(--b=1,2))", 13, "zip(...) cannot be nested"),
        ("--z=1,2 zip(--a=1,2", 9, "'zip(' is never closed"),
        ("zip()", 1, "zip() is empty"),
        ("zip(  )", 1, "zip() is empty"),
        ("zip(--a=1,2 --fast)", 13, "only swept words (KEY=A,B or KEY=range(...)) can be zipped"),
        ("zip(--a=1,2)x", 13, "unexpected 'x' after ')'; add a space"),
    ],
)
def test_errors_point_at_their_column(expression: str, column: int, reason: str):
    with pytest.raises(SweepError) as caught:
        expand(expression)
    assert (caught.value.column, caught.value.reason) == (column, reason)
    assert str(caught.value) == f"column {column}: {reason}"


def test_an_empty_alternative_makes_an_execution_without_parameters(campaign: Path):
    folders = expegit("exec", "new", "--sweep", "--flag;", cwd=campaign).stdout.split()
    assert len(folders) == 2
    params = {expegit("exec", "params", Path(f).name, cwd=campaign).stdout for f in folders}
    assert params == {"--flag\n", "\n"}
