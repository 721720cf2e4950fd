"""The papers' claims as checks over a table's cells: a tiny language, parsed without eval.

Each table spec (``conf/table/<name>.yaml``) may hold ``claims:``, a list of ``{id, text, source,
check}``: ``text`` is the paper's wording, ``source`` the paper and section (papers.md), and
``check`` an expression over the table's cells in this grammar (a hand-written tokenizer and
recursive-descent parser; nothing is ever run as Python)::

    check   := clause ("and" clause)*
    clause  := [scope ":"] sum CMP sum (CMP sum)*     CMP is > >= < <=; a >= b >= c is a >= b and b >= c
    scope   := "*" | COLUMN ("," COLUMN)*             the clause once per listed column (* = every column)
    sum     := unary (("+" | "-") unary)*
    unary   := "-" unary | atom
    atom    := NUMBER | "FP" | "(" sum ")" | "abs" "(" sum ")"
             | "spread" "(" cells ")" | "field" "(" NAME "," cells ")" | cells
    cells   := [COLUMN] (ROW | "all" "(" ROW ("," ROW)* ")")
    ROW     := "a row label in double quotes": the exact label, or the start of exactly one label

What the terms mean:

- ``W2A2 "Config 3"``: the cell's top-1 over its seeds; a bare ``"Config 3"`` takes the clause's
  scope column, so ``W2A2: "Config 3" > "Config 2"`` is ``W2A2 "Config 3" > W2A2 "Config 2"``.
- ``FP``: our FP top-1, the mean over the runs of the cells of the comparison it appears in.
- ``field(weight_cosine_mean, W4A4 "ResNet-18")``: a record field (dotted) instead of top-1.
- ``spread(W2A2 "LSQ+")``: the seeds' spread of a cell; it is compared with another spread only.
- ``abs(E)``: the absolute value of E; one per comparison, whose other side names no cell.
- ``all("Config 3", "Config 4")``: every one of these rows; a comparison naming sets stands for
  every combination of their rows, and each must hold ("every asymmetric row beats every
  symmetric row": ``W2A2: all("Config 3", "Config 4") > all("Config 1", "Config 2")``).

:func:`load_claims` parses a spec's claims and resolves every column and row against it, so a
malformed claim is an error naming the spec and the claim before any record is read. Each claim
becomes a list of :class:`Comparison` (two sides, one operator, named cells only); how they are
judged on the seeds is :mod:`qbench.report.verdicts`.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

COMPARATORS = (">=", "<=", ">", "<")
KEYWORDS = ("FP", "abs", "spread", "field", "all", "and")
_TOKEN = re.compile(r'\s*(?:(?P<number>\d+(?:\.\d+)?)|"(?P<string>[^"]*)"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)'
                    r"|(?P<symbol>>=|<=|[<>+\-(),:*]))")


class ClaimError(ValueError):
    """A claim that cannot be parsed or does not fit its table spec."""


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, name, symbol, end
    text: str
    position: int


def tokenize(check: str) -> list[Token]:
    """The tokens of ``check``, ending with an ``end`` token; an unknown character is an error."""
    tokens, position = [], 0
    while check[position:].strip():
        match = _TOKEN.match(check, position)
        if match is None:
            where = len(check) - len(check[position:].lstrip())
            raise ClaimError(f"unexpected character {check[where]!r} at position {where + 1}")
        kind = match.lastgroup
        tokens.append(Token(kind, match.group(kind), match.start(kind)))
        position = match.end()
    return tokens + [Token("end", "", len(check))]


@dataclass(frozen=True)
class Number:
    value: float
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class FP:
    def __str__(self) -> str:
        return "FP"


@dataclass(frozen=True)
class Cells:
    """One cell (a single row) or a set of cells (``all(...)``, several rows) of one column;
    ``field`` is the record field read instead of top-1. Rows are full labels; ``written`` is how
    the claim spells each one."""

    column: str | None
    rows: tuple[str, ...]
    written: tuple[str, ...]
    quantified: bool = False
    field: str | None = None

    @property
    def key(self) -> tuple[str, str, str | None]:
        """(row label, column, field) of a single cell."""
        return self.rows[0], self.column, self.field

    def __str__(self) -> str:
        rows = ", ".join(f'"{w}"' for w in self.written)
        text = f"all({rows})" if self.quantified else rows
        text = f"{self.column} {text}" if self.column else text
        return f"field({self.field}, {text})" if self.field else text


@dataclass(frozen=True)
class Spread:
    cells: Cells

    def __str__(self) -> str:
        return f"spread({self.cells})"


@dataclass(frozen=True)
class Abs:
    inner: Expr

    def __str__(self) -> str:
        return f"abs({self.inner})"


@dataclass(frozen=True)
class Negative:
    inner: Expr

    def __str__(self) -> str:
        return f"-{self.inner}"


@dataclass(frozen=True)
class Binary:
    op: str  # + or -
    left: Expr
    right: Expr
    parenthesized: bool = False

    def __str__(self) -> str:
        text = f"{self.left} {self.op} {self.right}"
        return f"({text})" if self.parenthesized else text


Expr = Number | FP | Cells | Spread | Abs | Negative | Binary


@dataclass(frozen=True)
class Clause:
    """``scope: a op b op c ...``; ``scope`` is None (no scope), ``("*",)`` or column labels."""

    scope: tuple[str, ...] | None
    operands: tuple[Expr, ...]
    ops: tuple[str, ...]


CellKey = tuple  # (row label, column, field or None): one cell's quantity
FP_TERM = "FP"
ABS_TERM = "abs"


@dataclass(frozen=True)
class Linear:
    """Σ coefficient · term + constant; a term is a :data:`CellKey` (the mean over the cell's
    seeds), :data:`FP_TERM` or :data:`ABS_TERM` (the comparison's one abs())."""

    terms: dict
    constant: float = 0.0

    def __add__(self, other: Linear) -> Linear:
        terms = dict(self.terms)
        for key, a in other.terms.items():
            terms[key] = terms.get(key, 0.0) + a
        return Linear({k: a for k, a in terms.items() if a != 0.0}, self.constant + other.constant)

    def scaled(self, factor: float) -> Linear:
        return Linear({k: factor * a for k, a in self.terms.items()}, factor * self.constant)

    def cells(self) -> dict:
        """The cell terms alone."""
        return {k: a for k, a in self.terms.items() if k not in (FP_TERM, ABS_TERM)}


@dataclass(frozen=True)
class LinearTest:
    """How a comparison of means is judged: ``difference`` is left − right; where the comparison
    has an abs(), ``folded`` is the expression inside it and ``difference`` holds :data:`ABS_TERM`."""

    difference: Linear
    folded: Linear | None = None


@dataclass(frozen=True)
class SpreadTest:
    """How ``spread(left) op spread(right)`` is judged: the F test of the two cells' variances."""

    left: CellKey
    right: CellKey


@dataclass(frozen=True)
class Comparison:
    """``left op right`` over single cells (every scope and set expanded), and how to test it."""

    left: Expr
    op: str
    right: Expr
    test: LinearTest | SpreadTest

    def cell_keys(self) -> list[CellKey]:
        """The cells it names, each once, in reading order."""
        return list(dict.fromkeys(c.key for c in cells_of(self.left) + cells_of(self.right)))

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    source: str
    check: str
    comparisons: tuple[Comparison, ...]


class _Parser:
    """Recursive descent over the tokens of one check, following the grammar in the module docstring."""

    def __init__(self, check: str):
        self.check = check
        self.tokens = tokenize(check)
        self.index = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def _error(self, expected: str) -> ClaimError:
        token = self.token
        got = "the end" if token.kind == "end" else repr(token.text)
        return ClaimError(f"expected {expected} at position {token.position + 1}, got {got}")

    def _take(self, kind: str, text: str | None = None) -> Token:
        token = self.token
        if token.kind != kind or (text is not None and token.text != text):
            raise self._error(text and repr(text) or {"string": "a row label in quotes", "name": "a name"}[kind])
        self.index += 1
        return token

    def _at(self, kind: str, text: str | None = None, ahead: int = 0) -> bool:
        token = self.tokens[min(self.index + ahead, len(self.tokens) - 1)]
        return token.kind == kind and (text is None or token.text == text)

    def check_(self) -> list[Clause]:
        clauses = [self._clause()]
        while self._at("name", "and"):
            self.index += 1
            clauses.append(self._clause())
        if not self._at("end"):
            raise self._error("a comparison operator or 'and'")
        return clauses

    def _clause(self) -> Clause:
        scope = self._scope()
        operands, ops = [self._sum()], []
        while self._at("symbol") and self.token.text in COMPARATORS:
            ops.append(self._take("symbol").text)
            operands.append(self._sum())
        if not ops:
            raise self._error("a comparison (> >= < <=)")
        return Clause(scope, tuple(operands), tuple(ops))

    def _scope(self) -> tuple[str, ...] | None:
        if self._at("symbol", "*"):
            self.index += 1
            self._take("symbol", ":")
            return ("*",)
        if not (self._at("name") and self.token.text not in KEYWORDS
                and (self._at("symbol", ":", 1) or self._at("symbol", ",", 1))):
            return None
        columns = [self._take("name").text]
        while self._at("symbol", ","):
            self.index += 1
            columns.append(self._take("name").text)
        self._take("symbol", ":")
        return tuple(columns)

    def _sum(self) -> Expr:
        expr = self._unary()
        while self._at("symbol", "+") or self._at("symbol", "-"):
            op = self._take("symbol").text
            expr = Binary(op, expr, self._unary())
        return expr

    def _unary(self) -> Expr:
        if self._at("symbol", "-"):
            self.index += 1
            return Negative(self._unary())
        return self._atom()

    def _atom(self) -> Expr:
        token = self.token
        if token.kind == "number":
            self.index += 1
            return Number(float(token.text), token.text)
        if self._at("symbol", "("):
            self.index += 1
            inner = self._sum()
            self._take("symbol", ")")
            return replace(inner, parenthesized=True) if isinstance(inner, Binary) else inner
        if token.kind == "name" and token.text in ("FP", "abs", "spread", "field"):
            self.index += 1
            return self._keyword(token.text)
        if token.kind in ("string", "name"):
            return self._cells()
        raise self._error("a number, FP, a cell, abs(), spread() or field()")

    def _keyword(self, word: str) -> Expr:
        if word == "FP":
            return FP()
        self._take("symbol", "(")
        if word == "abs":
            expr: Expr = Abs(self._sum())
        elif word == "spread":
            expr = Spread(self._cells())
        else:
            name = self._take("name").text
            self._take("symbol", ",")
            expr = replace(self._cells(), field=name)
        self._take("symbol", ")")
        return expr

    def _cells(self) -> Cells:
        column = None
        if self._at("name") and self.token.text != "all":
            column = self._take("name").text
            if column in KEYWORDS:
                position = self.tokens[self.index - 1].position + 1
                raise ClaimError(f"{column!r} cannot name a column (position {position})")
        if self._at("name", "all"):
            self.index += 1
            self._take("symbol", "(")
            rows = [self._take("string").text]
            while self._at("symbol", ","):
                self.index += 1
                rows.append(self._take("string").text)
            self._take("symbol", ")")
            return Cells(column, tuple(rows), tuple(rows), quantified=True)
        if not self._at("string"):
            raise self._error(f"a row label in quotes or all(...) after {column}" if column else "a cell")
        row = self._take("string").text
        return Cells(column, (row,), (row,))


def parse(check: str) -> list[Clause]:
    """The clauses of ``check`` (see the module docstring); a :class:`ClaimError` says where it
    stopped making sense."""
    return _Parser(check).check_()


def _map_cells(expr: Expr, change: Callable[[Cells], Cells]) -> Expr:
    """``expr`` with every :class:`Cells` node replaced by ``change(node)``, in reading order."""
    if isinstance(expr, Cells):
        return change(expr)
    if isinstance(expr, Spread):
        return Spread(change(expr.cells))
    if isinstance(expr, (Abs, Negative)):
        return type(expr)(_map_cells(expr.inner, change))
    if isinstance(expr, Binary):
        return Binary(expr.op, _map_cells(expr.left, change), _map_cells(expr.right, change), expr.parenthesized)
    return expr


def cells_of(expr: Expr) -> list[Cells]:
    """The :class:`Cells` nodes of ``expr``, in reading order."""
    found: list[Cells] = []
    _map_cells(expr, lambda cells: found.append(cells) or cells)
    return found


def _row_label(written: str, spec: dict) -> str:
    """The spec's row label ``written`` names: the exact label, else the one label starting with it."""
    labels = [row["label"] for row in spec["rows"]]
    if written in labels:
        return written
    matches = [label for label in labels if label.startswith(written)]
    if len(matches) != 1:
        problem = "matches several rows" if matches else "matches no row"
        raise ClaimError(f'"{written}" {problem}; rows: {", ".join(repr(label) for label in labels)}')
    return matches[0]


def _resolve(cells: Cells, column: str | None, spec: dict) -> Cells:
    """``cells`` with its column (or the scope's) checked and its rows as full labels of rows with runs."""
    column = cells.column or column
    if column is None:
        raise ClaimError(f'{cells} needs a column: write W2A2 "Row", or a scope such as W2A2: ...')
    if column not in spec["columns"]:
        raise ClaimError(f"unknown column {column!r}; columns: {', '.join(spec['columns'])}")
    rows = tuple(_row_label(w, spec) for w in cells.written)
    for label in rows:
        if next(row for row in spec["rows"] if row["label"] == label).get("select") is None:
            raise ClaimError(f"row {label!r} quotes the paper only: it has no runs to check")
    return replace(cells, column=column, rows=rows)


def _scope_columns(scope: tuple[str, ...] | None, spec: dict) -> list[str | None]:
    if scope is None:
        return [None]
    if scope == ("*",):
        return list(spec["columns"])
    for column in scope:
        if column not in spec["columns"]:
            raise ClaimError(f"unknown column {column!r} in the scope; columns: {', '.join(spec['columns'])}")
    return list(scope)


def _picked(expr: Expr, picks: Iterator[int]) -> Expr:
    """``expr`` with its i-th :class:`Cells` narrowed to its row number ``next(picks)``."""
    def pick(cells: Cells) -> Cells:
        i = next(picks)
        return replace(cells, rows=(cells.rows[i],), written=(cells.written[i],), quantified=False)
    return _map_cells(expr, pick)


def _expand(left: Expr, right: Expr) -> Iterator[tuple[Expr, Expr]]:
    """``left op right`` once per combination of the rows of its sets (every set's row in turn)."""
    sets = cells_of(left) + cells_of(right)
    for choice in itertools.product(*(range(len(cells.rows)) for cells in sets)):
        picks = iter(choice)
        yield _picked(left, picks), _picked(right, picks)


def _comparisons(clause: Clause, spec: dict) -> list[Comparison]:
    """Every comparison a clause stands for: per scope column, per adjacent pair, per combination of sets."""
    out = []
    for column in _scope_columns(clause.scope, spec):
        operands = [_map_cells(e, lambda cells, c=column: _resolve(cells, c, spec)) for e in clause.operands]
        for left, op, right in zip(operands, clause.ops, operands[1:]):
            out += [Comparison(a, op, b, _test(a, b, op)) for a, b in _expand(left, right)]
    return out


def _linear(expr: Expr, folded: list[Linear]) -> Linear:
    """``expr`` as a :class:`Linear`; an abs() goes to ``folded`` and stands as :data:`ABS_TERM`."""
    if isinstance(expr, Number):
        return Linear({}, expr.value)
    if isinstance(expr, FP):
        return Linear({FP_TERM: 1.0})
    if isinstance(expr, Cells):
        return Linear({expr.key: 1.0})
    if isinstance(expr, Negative):
        return _linear(expr.inner, folded).scaled(-1.0)
    if isinstance(expr, Binary):
        right = _linear(expr.right, folded)
        return _linear(expr.left, folded) + (right if expr.op == "+" else right.scaled(-1.0))
    if isinstance(expr, Abs):
        inner = _linear(expr.inner, folded)
        if folded:
            raise ClaimError("one abs() per comparison")
        folded.append(inner)
        return Linear({ABS_TERM: 1.0})
    raise ClaimError("spread() can only be compared with another spread()")


def _test(left: Expr, right: Expr, op: str) -> LinearTest | SpreadTest:
    """How ``left op right`` is judged; a :class:`ClaimError` for what no test decides."""
    where = f"{left} {op} {right}: "
    if isinstance(left, Spread) and isinstance(right, Spread):
        return SpreadTest(left.cells.key, right.cells.key)
    folded: list[Linear] = []
    try:
        difference = _linear(left, folded) + _linear(right, folded).scaled(-1.0)
    except ClaimError as exc:
        raise ClaimError(where + str(exc)) from None
    if not cells_of(left) + cells_of(right):
        raise ClaimError(where + "names no cell")
    if folded and difference.cells():
        raise ClaimError(where + "abs() can only be compared with numbers and FP")
    return LinearTest(difference, folded[0] if folded else None)


def _claim(entry: object, spec: dict) -> Claim:
    """One entry of the spec's ``claims:`` list, parsed and resolved against the spec."""
    if not isinstance(entry, dict):
        raise ClaimError(f"a claim is a mapping with id, text, source and check, got {entry!r}")
    missing = [key for key in ("id", "text", "source", "check") if not isinstance(entry.get(key), str)]
    if missing:
        raise ClaimError(f"claim {entry.get('id', '(no id)')!r} lacks {', '.join(missing)} (text each)")
    try:
        comparisons = [c for clause in parse(entry["check"]) for c in _comparisons(clause, spec)]
    except ClaimError as exc:
        raise ClaimError(f"claim {entry['id']!r}: {exc}") from None
    return Claim(entry["id"], entry["text"], entry["source"], entry["check"], tuple(comparisons))


def load_claims(spec: dict) -> list[Claim]:
    """The spec's claims, parsed and resolved; an error names the spec and the claim."""
    try:
        claims = [_claim(entry, spec) for entry in spec.get("claims") or []]
        ids = [claim.id for claim in claims]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ClaimError(f"claim ids repeated: {', '.join(repeated)}")
    except ClaimError as exc:
        raise ClaimError(f"table spec {spec.get('name', '?')}, {exc}") from None
    return claims


