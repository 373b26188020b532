"""Parameter expressions: one string that stands for the parameters of many executions.

`git expegit exec new --sweep EXPR -r N` turns EXPR into an ordered list of parameter
strings, one per execution, each repeated N times in a row. EXPR takes one of three forms.

Sections (the original Orchestra grammar)
    When EXPR contains `¤` (or its ASCII spelling `|`; one expression uses one of them) or a
    `;` outside single quotes, it is split on `¤` into sections and each section on `;` into
    alternatives. Every combination, the first section varying slowest, is joined with one
    space. Only the alternatives of the last section are trimmed; an empty alternative means
    "nothing there", as in the original, so that running without parameters can be asked for:

        --lr|0.1;0.01|--fast;  ->  "--lr 0.1 --fast", "--lr 0.1 ", "--lr 0.01 --fast",
                                   "--lr 0.01 "
        a;b                    ->  "a", "b"
        --flag;                ->  "--flag", ""

    Quotes, parentheses and other commas are plain text in this form (runaway's shell-like
    split removes the quotes later). A key sweep (`KEY=A,B`, `KEY=range(...)`, `zip(...)`,
    see below) is refused there: the two forms cannot be mixed, and the original would have
    taken it literally, which is never what was meant. Quoting the comma keeps it literal.

Key sweeps
    Otherwise EXPR is a list of words separated by spaces. A word `KEY=A,B,C` is an axis
    giving `KEY=A`, `KEY=B`, `KEY=C`; `KEY=range(STOP)`, `KEY=range(START,STOP)` and
    `KEY=range(START,STOP,STEP)` are axes over integers, as Python's range. KEY is what comes
    before the first `=` (`--lr`, `-s`, `seed`). Axes combine in every way, the first axis
    varying slowest; the other words stay where they are, and words are rejoined with one space:

        --lr=0.1,0.01 --seed=range(2) --fast  ->  "--lr=0.1 --seed=0 --fast",
            "--lr=0.1 --seed=1 --fast", "--lr=0.01 --seed=0 --fast", "--lr=0.01 --seed=1 --fast"

    `zip(W1 W2 ...)` makes the axes inside advance together (they must have as many values)
    and counts as one axis: `zip(--lr=0.1,0.01 --bs=16,32)` gives `--lr=0.1 --bs=16` and
    `--lr=0.01 --bs=32`.

    Single quotes make text literal and are removed: `--name='a,b'` is the one word
    `--name=a,b`, `--tag='x,y',z` sweeps over `x,y` and `z`, and `--opt='',-O2` over an empty
    value and `-O2` (an unquoted empty value is an error). There are no escapes. A word
    whose quotes held spaces or shell characters is kept shell-quoted, so that each execution
    receives exactly that word. Outside quotes, `,` belongs only after `KEY=`, `(` and `)` only
    to `range(...)` and `zip(...)`, and `;` only to the sections form; double quotes cannot
    appear in a swept word.

Plain string
    An expression with no `¤`, `|`, `,`, `(` or `)`, and no `;` outside single quotes, is one
    execution, exactly as written.

An empty expression is an error, and so is one that expands to more than 100000 executions
(repeats included). Errors are `SweepError`s carrying the 1-based column of the problem.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import shlex
from collections.abc import Sequence

LIMIT = 100_000
SECTION = "¤"
ASCII_SECTION = "|"
# Characters that turn a plain string into a key sweep (see the module docstring).
_SWEEP_CHARACTERS = frozenset(",()")
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_SHELL_SAFE = re.compile(r"[\w@%+=:,./-]+", re.ASCII)  # what shlex.quote leaves alone


class SweepError(Exception):
    """A grammar error; .column is 1-based, .reason is the text."""

    def __init__(self, reason: str, column: int) -> None:
        super().__init__(f"column {column}: {reason}")
        self.reason = reason
        self.column = column


def expand(expression: str, repeat: int = 1) -> list[str]:
    """The parameter strings of the executions EXPRESSION stands for, each `repeat` times."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, not {repeat}")
    if not expression.strip():
        raise SweepError("empty expression", 1)
    positions: list[_Position]
    if _is_sections(expression):
        positions = list(_sections(expression))
    elif _SWEEP_CHARACTERS.isdisjoint(expression):
        positions = [[expression]]
    else:
        positions = [[item] if isinstance(item, str) else item
                     for item in _Parser(expression).items()]
    total = math.prod(_count(position) for position in positions) * repeat
    if total > LIMIT:
        raise SweepError(f"expands to {total} executions; the limit is {LIMIT}", 1)
    # Only now are ranges turned into words: the limit keeps every list small.
    choices = [_words(position) for position in positions]
    return [" ".join(words) for words in itertools.product(*choices) for _ in range(repeat)]


# The sections form ----------------------------------------------------------------------------


def _is_sections(expression: str) -> bool:
    """The sections form: a `¤` or `|`, or a `;` that single quotes do not hold (the key
    form's `--sep=';'` keeps its meaning; a lone apostrophe, as in "don't", quotes nothing)."""
    if SECTION in expression or ASCII_SECTION in expression:
        return True
    quoted = _quoted_positions(expression, "'")
    return any(c == ";" and i not in quoted for i, c in enumerate(expression))


def _quoted_positions(text: str, quotes: str) -> set[int]:
    """The positions inside a pair of the given quote characters, quotes included; quotes
    pair left to right and one left without a partner is plain text."""
    inside: set[int] = set()
    position = 0
    while position < len(text):
        if text[position] in quotes:
            closing = text.find(text[position], position + 1)
            if closing < 0:
                break
            inside.update(range(position, closing + 1))
            position = closing
        position += 1
    return inside


def _sections(expression: str) -> list[list[str]]:
    """One list of alternatives per section, exactly as the original split them."""
    if SECTION in expression and ASCII_SECTION in expression:
        raise SweepError(
            f"'{SECTION}' and '{ASCII_SECTION}' cannot be mixed; use one of them",
            expression.index(ASCII_SECTION) + 1,
        )
    _refuse_key_sweeps(expression)
    separator = SECTION if SECTION in expression else ASCII_SECTION
    sections = [section.split(";") for section in expression.split(separator)]
    # The original trims the last section only, so " --param" keeps its leading space.
    sections[-1] = [alternative.strip() for alternative in sections[-1]]
    return sections


# A word of the key form, as it would be read outside quotes: KEY=A,B, KEY=range(, zip(.
_KEY_SWEEP = re.compile(r"[^=]+=(?:[^,]*,|range\()|zip\(")


def _refuse_key_sweeps(expression: str) -> None:
    """A key sweep inside sections is a mix of the two forms: refused at its first word."""
    quoted = _quoted_positions(expression, "'\"")
    for word in re.finditer(rf"[^\s;{SECTION}{re.escape(ASCII_SECTION)}]+", expression):
        # Quoted characters are blanked, so a quoted ',' or '(' keeps the word literal.
        bare = "".join(" " if word.start() + i in quoted else c
                       for i, c in enumerate(word.group()))
        if _KEY_SWEEP.match(bare):
            raise SweepError(
                f"{word.group()!r} is a key sweep (KEY=A,B), which cannot be mixed with "
                f"sections (A;B and {SECTION} or {ASCII_SECTION}); write the expression in one "
                "form, or quote the ',' or '(' to keep it literal",
                word.start() + 1,
            )


# Key sweeps -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Piece:
    """One character of a word, or "" for an empty quoted string ''."""

    text: str
    column: int
    quoted: bool


@dataclasses.dataclass(frozen=True)
class _Axis:
    """A swept word: its values, kept lazy for ranges so the limit is checked first."""

    column: int
    key: str
    prefix: str  # "KEY=" with quotes removed
    values: Sequence[str] | range

    @property
    def size(self) -> int:
        # len() of a range fails beyond sys.maxsize; such a sweep must still hit the limit.
        if isinstance(self.values, range):
            start, stop, step = self.values.start, self.values.stop, self.values.step
            return max(0, (stop - start + step - (1 if step > 0 else -1)) // step)
        return len(self.values)

    def word(self, index: int) -> str:
        return _shell_word(self.prefix + str(self.values[index]))


@dataclasses.dataclass(frozen=True)
class _Zip:
    axes: tuple[_Axis, ...]

    @property
    def size(self) -> int:
        return self.axes[0].size


_Item = str | _Axis | _Zip  # a str is a literal word


# One position of the product: fixed alternatives (sections, a literal word) or a sweep.
_Position = list[str] | _Axis | _Zip


def _words(position: _Position) -> list[str]:
    if isinstance(position, list):
        return position
    axes = position.axes if isinstance(position, _Zip) else (position,)
    return [" ".join(axis.word(index) for axis in axes) for index in range(position.size)]


def _count(position: _Position) -> int:
    return len(position) if isinstance(position, list) else position.size


def _shell_word(text: str) -> str:
    """TEXT, shell-quoted only if runaway's shell-like split would not give it back as is."""
    if _SHELL_SAFE.fullmatch(text):  # the common case, and much faster than shlex
        return text
    try:
        if shlex.split(text) == [text]:
            return text
    except ValueError:  # an unbalanced " or a trailing backslash
        pass
    return shlex.quote(text)


class _Parser:
    """Reads the words of a key sweep left to right, remembering each character's column."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    def error(self, reason: str, position: int | None = None) -> SweepError:
        return SweepError(reason, (self.position if position is None else position) + 1)

    def peek(self) -> str:
        return self.text[self.position] if self.position < len(self.text) else ""

    def skip_spaces(self) -> None:
        while self.peek().isspace():
            self.position += 1

    def items(self) -> list[_Item]:
        items: list[_Item] = []
        while True:
            self.skip_spaces()
            if not self.peek():
                return items
            if self.text.startswith("zip(", self.position):
                items.append(self.zip())
            else:
                items.append(self.word(in_zip=False))

    def zip(self) -> _Zip:
        start = self.position
        self.position += len("zip(")
        axes: list[_Axis] = []
        while True:
            self.skip_spaces()
            if not self.peek():
                raise self.error("'zip(' is never closed", start)
            if self.peek() == ")":
                self.position += 1
                break
            if self.text.startswith("zip(", self.position):
                raise self.error("zip(...) cannot be nested")
            word_start = self.position
            word = self.word(in_zip=True)
            if isinstance(word, str):
                raise self.error(
                    "only swept words (KEY=A,B or KEY=range(...)) can be zipped", word_start
                )
            axes.append(word)
        self.end_of_word(in_zip=False)
        if not axes:
            raise self.error("zip() is empty", start)
        longest = max(axes, key=lambda axis: axis.size)
        for axis in axes:
            if axis.size < longest.size:
                raise SweepError(
                    f"zip() needs as many values everywhere: {axis.key} has {axis.size}, "
                    f"{longest.key} has {longest.size}",
                    axis.column,
                )
        return _Zip(tuple(axes))

    def end_of_word(self, in_zip: bool) -> None:
        """After a ')', a word must end: `range(3)x` or `zip(...)x` is a typo."""
        character = self.peek()
        if character and not character.isspace() and not (in_zip and character == ")"):
            raise self.error(f"unexpected '{character}' after ')'; add a space")

    def word(self, in_zip: bool) -> str | _Axis:
        start = self.position
        pieces: list[_Piece] = []
        equals: int | None = None  # index in pieces of the first unquoted "="
        while True:
            character = self.peek()
            if not character or character.isspace() or (in_zip and character == ")"):
                break
            column = self.position + 1
            if character == "'":
                pieces.extend(self.quoted())
                continue
            if character == ")":
                raise self.error("unmatched ')'")
            if character == "(":
                return self.call(pieces, equals, start, in_zip)
            if character == "=" and equals is None:
                equals = len(pieces)
            pieces.append(_Piece(character, column, quoted=False))
            self.position += 1
        return self.literal_or_axis(pieces, equals, start)

    def quoted(self) -> list[_Piece]:
        opening = self.position
        closing = self.text.find("'", opening + 1)
        if closing < 0:
            raise self.error("unclosed quote", opening)
        self.position = closing + 1
        if closing == opening + 1:
            return [_Piece("", opening + 1, quoted=True)]
        return [_Piece(self.text[i], i + 1, quoted=True) for i in range(opening + 1, closing)]

    def key(self, pieces: list[_Piece], equals: int | None) -> str:
        """The text before "=", checked to be a real key for a swept word."""
        commas = [piece for piece in pieces if piece.text == "," and not piece.quoted]
        # Only reached for words with a comma or a "(", so a missing "=" has a comma to show.
        if equals is None or (commas and commas[0].column < pieces[equals].column):
            raise SweepError(
                "a swept word needs a KEY= before its values (--lr=0.1,0.01); "
                "quote a literal ','",
                commas[0].column,
            )
        if equals == 0:
            raise SweepError("missing KEY before '='", pieces[0].column)
        quotes = [piece for piece in pieces if piece.text == '"' and not piece.quoted]
        if quotes:
            raise SweepError(
                "double quotes cannot appear in a swept word; use single quotes",
                quotes[0].column,
            )
        return "".join(piece.text for piece in pieces[:equals])

    def literal_or_axis(self, pieces: list[_Piece], equals: int | None, start: int) -> str | _Axis:
        if not any(piece.text == "," and not piece.quoted for piece in pieces):
            if any(piece.quoted for piece in pieces):
                return _shell_word("".join(piece.text for piece in pieces))
            return self.text[start : self.position]  # as written, double quotes and all
        key = self.key(pieces, equals)
        assert equals is not None  # key() checked it
        values: list[str] = []
        value: list[_Piece] = []
        after = pieces[equals]  # the "=" or "," the current value starts after
        for piece in [*pieces[equals + 1 :], _Piece(",", self.position + 1, quoted=False)]:
            if piece.text == "," and not piece.quoted:
                if not value:
                    raise SweepError("empty value; quote it ('') to mean one", after.column + 1)
                values.append("".join(p.text for p in value))
                value, after = [], piece
            else:
                value.append(piece)
        return _Axis(start + 1, key, key + "=", tuple(values))

    def call(self, pieces: list[_Piece], equals: int | None, start: int, in_zip: bool) -> _Axis:
        """KEY=NAME(...) at self.position's "(": only NAME range exists."""
        opening = self.position
        name = pieces[equals + 1 :] if equals is not None else []
        name_text = "".join(piece.text for piece in name)
        if (
            not name
            or any(piece.quoted for piece in name)
            or not _IDENTIFIER.fullmatch(name_text)
        ):
            raise self.error(
                "unexpected '('; parentheses belong to KEY=range(...) and zip(...) only, "
                "quote a literal '('"
            )
        if name_text != "range":
            raise SweepError(
                f"unknown function '{name_text}'; only range(...) can follow '='",
                name[0].column,
            )
        closing = self.text.find(")", opening)
        if closing < 0:
            raise self.error("'(' is never closed")
        nested = self.text.find("(", opening + 1, closing)
        if nested >= 0:
            raise self.error("unexpected '(' inside range(...)", nested)
        assert equals is not None  # name was found after it
        key = self.key(pieces[: equals + 1], equals)
        numbers = self.range_arguments(opening, closing, name[0].column)
        self.position = closing + 1
        self.end_of_word(in_zip)
        values = range(*numbers)
        if not values:
            raise SweepError(
                f"{self.text[name[0].column - 1 : closing + 1]} is empty", name[0].column
            )
        return _Axis(start + 1, key, key + "=", values)

    def range_arguments(self, opening: int, closing: int, column: int) -> list[int]:
        """The integers between the parentheses at OPENING and CLOSING."""
        arguments = self.text[opening + 1 : closing].split(",")
        if len(arguments) > 3 or arguments == [""] or not "".join(arguments).strip():
            raise SweepError(
                "range() takes 1 to 3 integers: STOP, START,STOP or START,STOP,STEP", column
            )
        numbers: list[int] = []
        columns: list[int] = []
        position = opening + 1  # where the current argument starts
        for argument in arguments:
            stripped = argument.strip()
            columns.append(position + len(argument) - len(argument.lstrip()) + 1)
            if not stripped:
                raise SweepError("empty range() argument", columns[-1])
            if not _INTEGER.fullmatch(stripped):
                raise SweepError(f"range() argument '{stripped}' is not an integer", columns[-1])
            try:
                numbers.append(int(stripped))
            except ValueError:  # beyond sys.get_int_max_str_digits()
                raise SweepError("range() argument is too large", columns[-1]) from None
            position += len(argument) + 1
        if len(numbers) == 3 and numbers[2] == 0:
            raise SweepError("range() step cannot be 0", columns[2])
        return numbers
