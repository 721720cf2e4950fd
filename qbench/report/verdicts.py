"""Verdicts of the papers' claims (:mod:`qbench.report.claims`) on a table's runs, and their markdown.

The cells are those :func:`qbench.report.table.collect` builds: the seeds of one run identity per
row × column. Each comparison a claim stands for gets one verdict, by this rule (:data:`RULE`,
printed on every page that shows verdicts):

- A comparison of means — cells' top-1 or record fields, numbers, FP — is decided by the 95%
  two-sided confidence interval of left − right over the seeds (:func:`qbench.report.stats.linear_interval`):
  Welch's t with Welch–Satterthwaite degrees of freedom for two cells (a linear combination of
  more cells alike), the one-sample t interval for one cell against a number or FP. FP is our FP
  top-1, the mean over the runs of the cells compared, taken as exact. The interval wholly on the
  claimed side of 0: **holds**; wholly on the other side: **fails** (significant the other way);
  containing 0: **inconclusive** (the difference is inside the seeds' spread). ``>`` and ``>=``
  are tested alike. ``abs(E)`` takes the interval of E folded at 0.
- ``spread(a) < spread(b)`` is the two-sided F test of the seeds' variances at 95%.
- A cell not run, with a diverged run, or with fewer than 2 seeds (a record field: fewer than 2
  runs holding it) makes its comparisons inconclusive, and the verdict says which cell and why;
  except one cell against another (``A > B``, top-1) where one diverged in every run (2 or more)
  and the other finished every run (2 or more seeds): a network that does not train ranks below
  one that does, so the finished cell is the larger (:func:`_trained_against_diverged`).
- A claim holds if every comparison holds, fails if any fails, else is inconclusive.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qbench.report.claims import (ABS_TERM, FP, FP_TERM, Abs, CellKey, Cells, Claim, Comparison, Expr,
                                  Linear, LinearTest, Negative, Number, Spread, SpreadTest, cells_of, load_claims)
from qbench.report.records import flatten
from qbench.report.stats import Interval, Sample, linear_interval, seed_spread, variance_ratio_cdf
from qbench.report.text import plural

if TYPE_CHECKING:
    from qbench.report.table import Cell

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
LEVEL = 0.95
MISSING = "—"
RULE = ("each comparison is decided on the seeds' values at 95%, two-sided. Means (top-1, a record field) "
        "by the confidence interval of left − right: Welch's t with Welch–Satterthwaite degrees of freedom "
        "between cells, the one-sample t interval against a number or FP (FP: the mean FP top-1 of the runs "
        "compared); abs() folds that interval at 0. spread() by the F test of the seeds' variances. "
        "Significant in the claimed direction: holds; significant the other way: fails; otherwise "
        "inconclusive (difference inside the seeds' spread), as is a comparison naming a cell not run, "
        "diverged, or with fewer than 2 seeds; but where one cell diverged in every run (2 or more) and the "
        "cell it is compared with finished every run (2 or more seeds), the finished cell ranks above it. "
        "> and >= are tested alike. A claim holds if all its comparisons hold, fails if any fails, else is "
        "inconclusive.")


@dataclass(frozen=True)
class Outcome:
    """The verdict of one comparison on one set of runs: the cells' numbers, the verdict, and the
    test with its result (or why there is no test)."""

    verdict: str
    numbers: str
    reason: str


def _values(cell: Cell | None, field: str | None) -> list[float]:
    """The seeds' top-1 of a cell, or its runs' values of the record field ``field``."""
    if cell is None:
        return []
    if field is None:
        return list(cell.values)
    return [v for v in (flatten(r).get(field) for r in cell.records) if v is not None]


def _problem(name: str, cell: Cell | None, field: str | None) -> str | None:
    """Why a cell cannot be tested: not run, a diverged run, fewer than 2 seeds; None if it can."""
    diverged = cell.statuses.count("diverged") if cell is not None else 0
    if diverged:
        return f"{name} diverged ({diverged} of {len(cell.statuses)} runs)"
    values = _values(cell, field)
    if not values:
        ran = field is not None and cell is not None and cell.values
        return f"{name}: no run records {field}" if ran else f"{name} not run"
    if len(values) < 2:
        return f"{name} has 1 seed (a test needs 2)"
    return None


def _all_diverged(cell: Cell | None) -> bool:
    return cell is not None and len(cell.statuses) >= 2 and all(s == "diverged" for s in cell.statuses)


def _all_finished(cell: Cell | None) -> bool:
    return cell is not None and "diverged" not in cell.statuses and len(cell.values) >= 2


def _trained_against_diverged(comparison: Comparison, cells: dict,
                              names: dict[CellKey, str]) -> tuple[str, str] | None:
    """(verdict, reason) of ``A op B`` (top-1 of two cells, nothing else) where one cell diverged in
    every run and the other finished every run, each 2 or more: the finished one is the larger, so
    the difference left − right is taken as positive or negative; None for any other comparison."""
    test = comparison.test
    if not isinstance(test, LinearTest) or test.folded is not None or test.difference.constant != 0.0:
        return None
    terms = test.difference.terms
    if FP_TERM in terms or len(terms) != 2 or sorted(terms.values()) != [-1.0, 1.0] or any(key[2] for key in terms):
        return None
    left, right = (next(key for key, a in terms.items() if a == sign) for sign in (1.0, -1.0))
    for finished, diverged, sign in ((left, right, 1.0), (right, left, -1.0)):
        if _all_finished(cells.get(finished[:2])) and _all_diverged(cells.get(diverged[:2])):
            verdict = _decide(comparison.op, sign, sign)
            runs = len(cells[diverged[:2]].statuses)
            reason = (f"{names[diverged]} diverged in every run ({runs}), {names[finished]} finished in every "
                      f"seed ({len(cells[finished[:2]].values)}): a network that does not train ranks below one "
                      f"that does ({MEANING[verdict]})")
            return verdict, reason
    return None


def _cell_text(name: str, cell: Cell | None, field: str | None, spread_kind: str, digits: int) -> str:
    """``W4A4 "LSQ" 91.38 ± 0.10 (5 seeds)``; ``not run``, ``diverged`` where so."""
    values = _values(cell, field)
    if cell is not None and "diverged" in cell.statuses:
        return f"{name} diverged"
    if not values:
        return f"{name} {MISSING}"
    text = f"{statistics.fmean(values):.{digits}f}"
    if len(values) > 1:
        text += f" ± {seed_spread(values, spread_kind):.{digits}f}"
    return f"{name} {text} ({plural(len(values), 'seed')})"


def _names(comparison: Comparison) -> dict[CellKey, str]:
    """Each cell the comparison names, as the claim writes it (``W2A2 "Config 3"``)."""
    return {c.key: str(c) for c in cells_of(comparison.left) + cells_of(comparison.right)}


def _uses_fp(test: LinearTest | SpreadTest) -> bool:
    return isinstance(test, LinearTest) and (FP_TERM in test.difference.terms
                                             or test.folded is not None and FP_TERM in test.folded.terms)


def _fp(comparison: Comparison, cells: dict) -> float | None:
    """Our FP top-1 for a comparison: the mean over the finished runs of the cells it names."""
    runs = [cells.get((row, column)) for row, column, _ in comparison.cell_keys()]
    fps = [fp for cell in runs if cell is not None for fp in cell.fp]
    return statistics.fmean(fps) if fps else None


def _interval(linear: Linear, samples: dict[CellKey, Sample], fp: float | None) -> Interval:
    constant = linear.constant + linear.terms.get(FP_TERM, 0.0) * (fp or 0.0)
    return linear_interval([(a, samples[key]) for key, a in linear.cells().items()], constant, LEVEL)


def _difference(test: LinearTest, samples: dict[CellKey, Sample], fp: float | None) -> Interval:
    """The interval of left − right; with abs(), the inner interval folded at 0 and put in its place."""
    if test.folded is None:
        return _interval(test.difference, samples, fp)
    inner = _interval(test.folded, samples, fp)
    low = max(0.0, inner.low, -inner.high)
    high = max(abs(inner.low), abs(inner.high))
    outside = Linear({k: a for k, a in test.difference.terms.items() if k != ABS_TERM}, test.difference.constant)
    shift = _interval(outside, samples, fp).estimate
    a = test.difference.terms[ABS_TERM]
    ends = sorted((a * low + shift, a * high + shift))
    return Interval(a * abs(inner.estimate) + shift, ends[0], ends[1], inner.df)


def _decide(op: str, low: float, high: float) -> str:
    """Holds if the whole interval is on the claimed side of 0, fails if on the other, else inconclusive."""
    claimed_above = op in (">", ">=")
    if low > 0:
        return HOLDS if claimed_above else FAILS
    if high < 0:
        return FAILS if claimed_above else HOLDS
    return INCONCLUSIVE


MEANING = {HOLDS: "significant in the claimed direction", FAILS: "significant the other way",
           INCONCLUSIVE: "difference inside the seeds' spread"}


def _p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _test_name(test: LinearTest) -> str:
    n = len((test.folded or test.difference).cells())
    name = "one-sample t" if n == 1 else "Welch t" if n == 2 else f"Welch–Satterthwaite t over {n} cells"
    return f"{name} of the inside of abs(), folded" if test.folded is not None else name


def _judge_means(comparison: Comparison, samples: dict[CellKey, Sample], fp: float | None,
                 digits: int) -> tuple[str, str]:
    test = comparison.test
    interval = _difference(test, samples, fp)
    verdict = _decide(comparison.op, interval.low, interval.high)
    if interval.df is None:
        detail = "no spread over seeds, exact"
    else:
        p = "" if interval.p is None or test.folded is not None else f", p {_p_text(interval.p)}"
        detail = f"{_test_name(test)}, df {interval.df:.1f}{p}"
    meaning = "no difference" if interval.high == interval.low == 0.0 else MEANING[verdict]
    text = (f"left − right {interval.estimate:+.{digits}f}, {LEVEL:.0%} CI "
            f"[{interval.low:+.{digits}f}, {interval.high:+.{digits}f}] ({detail}): {meaning}")
    return verdict, text


def _judge_spreads(comparison: Comparison, samples: dict[CellKey, Sample]) -> tuple[str, str]:
    test = comparison.test
    left, right = samples[test.left], samples[test.right]
    if left.variance == 0.0 and right.variance == 0.0:
        return INCONCLUSIVE, "neither cell varies over its seeds"
    cdf = variance_ratio_cdf(left, right)
    tail = (1.0 - LEVEL) / 2
    smaller = cdf < tail
    larger = cdf > 1.0 - tail
    claimed_smaller = comparison.op in ("<", "<=")
    verdict = (HOLDS if smaller == claimed_smaller else FAILS) if smaller or larger else INCONCLUSIVE
    ratio = "inf" if right.variance == 0.0 else f"{left.variance / right.variance:.2f}"
    p = 2.0 * min(cdf, 1.0 - cdf)
    meaning = MEANING[verdict] if verdict != INCONCLUSIVE else "the variances do not differ significantly"
    test = f"F test ({left.n - 1}, {right.n - 1} df), p {_p_text(p)}"
    return verdict, f"variance ratio left / right {ratio}, {test}: {meaning}"


def judge(comparison: Comparison, cells: dict, spread_kind: str) -> Outcome:
    """The verdict of one comparison on ``cells`` ((row, column) → :class:`~qbench.report.table.Cell`)."""
    names = _names(comparison)
    digits = 4 if any(field for _, _, field in names) else 2
    numbers = [_cell_text(name, cells.get(key[:2]), key[2], spread_kind, digits) for key, name in names.items()]
    fp = _fp(comparison, cells)
    if _uses_fp(comparison.test):
        numbers.append(f"FP {fp:.2f}" if fp is not None else f"FP {MISSING}")
    problems = [p for key, name in names.items() if (p := _problem(name, cells.get(key[:2]), key[2]))]
    if problems:
        verdict, reason = _trained_against_diverged(comparison, cells, names) or (INCONCLUSIVE, "; ".join(problems))
        return Outcome(verdict, "; ".join(numbers), reason)
    samples = {key: Sample.of(_values(cells.get(key[:2]), key[2])) for key in names}
    if isinstance(comparison.test, SpreadTest):
        verdict, reason = _judge_spreads(comparison, samples)
    else:
        verdict, reason = _judge_means(comparison, samples, fp, digits)
    return Outcome(verdict, "; ".join(numbers), reason)


def overall(verdicts: list[str]) -> str:
    """A claim's verdict: holds if every comparison holds, fails if any fails, else inconclusive."""
    if FAILS in verdicts:
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def judge_claim(claim: Claim, cells: dict, spread_kind: str) -> tuple[str, list[Outcome]]:
    """The claim's verdict and each of its comparisons' outcomes on ``cells``."""
    outcomes = [judge(c, cells, spread_kind) for c in claim.comparisons]
    return overall([o.verdict for o in outcomes]), outcomes


def _paper_value(expr: Expr, spec: dict, fp: float | None) -> float | None:
    """``expr`` on the paper's numbers (``paper``, ``paper_spread``, ``paper_fp``); None if one is missing."""
    if isinstance(expr, Number):
        return expr.value
    if isinstance(expr, FP):
        return fp
    if isinstance(expr, (Cells, Spread)):
        cells = expr.cells if isinstance(expr, Spread) else expr
        row = next(r for r in spec["rows"] if r["label"] == cells.rows[0])
        numbers = row.get("paper_spread" if isinstance(expr, Spread) else "paper") or {}
        return None if cells.field else numbers.get(cells.column)
    if isinstance(expr, (Abs, Negative)):
        inner = _paper_value(expr.inner, spec, fp)
        return None if inner is None else abs(inner) if isinstance(expr, Abs) else -inner
    left, right = _paper_value(expr.left, spec, fp), _paper_value(expr.right, spec, fp)
    if left is None or right is None:
        return None
    return left + right if expr.op == "+" else left - right


def paper_text(comparison: Comparison, spec: dict) -> str:
    """The comparison on the paper's numbers (``73.80 >= 72.50``), or — where the paper lacks one."""
    rows = {row for row, _, _ in comparison.cell_keys()}
    fps = {r.get("paper_fp", spec.get("paper_fp")) for r in spec["rows"] if r["label"] in rows}
    fp = fps.pop() if len(fps) == 1 else None
    left, right = (_paper_value(side, spec, fp) for side in (comparison.left, comparison.right))
    if left is None or right is None:
        return MISSING
    return f"{left:.2f} {comparison.op} {right:.2f}"


def claim_block(spec: dict, claim: Claim, sources: list[tuple[str, dict]]) -> list[str]:
    """Markdown of one claim judged on each (label, cells) of ``sources``: its verdicts, the
    paper's wording and source, the check, then one line per comparison."""
    spread_kind = spec.get("spread", "std")
    judged = [judge_claim(claim, cells, spread_kind) for _, cells in sources]
    header = ["comparison", "paper"] + [f"{label}{suffix}" for label, _ in sources for suffix in ("", " verdict")]
    verdicts = " · ".join(f"{label}: {verdict}" for (label, _), (verdict, _) in zip(sources, judged))
    lines = ["", f"**{claim.id}** — {verdicts}",
             "", f"> {claim.text} — {claim.source}", "", f"Check: `{claim.check}`", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, comparison in enumerate(claim.comparisons):
        texts = [f"`{comparison}`", paper_text(comparison, spec)]
        for _, outcomes in judged:
            texts += [outcomes[i].numbers, f"{outcomes[i].verdict}: {outcomes[i].reason}"]
        lines.append("| " + " | ".join(texts) + " |")
    return lines


def claims_section(spec: dict, sources: list[tuple[str, dict]]) -> list[str]:
    """The spec's claims judged on each (label, cells) of ``sources``, for the bottom of its
    table; nothing where the spec has no claims."""
    claims = load_claims(spec)
    if not claims:
        return []
    lines = ["", "**The paper's claims, checked on these runs**", "", f"Verdict rule: {RULE}"]
    for claim in claims:
        lines += claim_block(spec, claim, sources)
    return lines
