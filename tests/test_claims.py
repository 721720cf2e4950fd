"""The papers' claims as checks over seeds: the t and F distributions, the claim language and its
errors, each verdict (holds, fails, and inconclusive for every reason) from hand-made records, the
claims under a table and ``qbench-table --claims``."""
import math

import pytest
import yaml

from qbench.report import cli
from qbench.report.claims import ClaimError, load_claims
from qbench.report.cli import CONF_TABLES, main
from qbench.report.records import write_record
from qbench.report.stats import (Sample, f_cdf, incomplete_beta, linear_interval, t_cdf, t_quantile,
                                 welch_satterthwaite_df)
from qbench.report.table import Runs, collect, load_spec, quotes_paper, render, render_compared
from qbench.report.verdicts import FAILS, HOLDS, INCONCLUSIVE, judge_claim
from tests.test_table import record

SPEC = {
    "name": "demo", "title": "Demo", "paper": "Someone 2020", "paper_fp": 70.0,
    "select": {"model.name": "resnet18"},
    "columns": {"W2A2": {"wbits": 2, "abits": 2}, "W4A4": {"wbits": 4, "abits": 4}},
    "rows": [
        {"label": "Config 1: plain", "select": {"method.name": "plain"}, "paper": {"W2A2": 60.0, "W4A4": 69.0},
         "paper_spread": {"W4A4": 2.0}},
        {"label": "Config 2: better", "select": {"method.name": "better"}, "paper": {"W2A2": 65.0, "W4A4": 70.0},
         "paper_spread": {"W4A4": 1.0}},
        {"label": "Config 3: best", "select": {"method.name": "best"}},
        {"label": "PACT", "paper": {"W2A2": 64.0}},
    ],
}
TIGHT_HIGH = [90.0, 90.2, 90.1]
TIGHT_LOW = [85.0, 85.2, 85.1]
WIDE = [89.5, 90.5, 88.5]


def seeds(bits, method, values, fp=90.0, status="ok"):
    """One record per seed of one cell."""
    return [record(bits, v, seed=i, method=method, fp=fp, status=status) for i, v in enumerate(values)]


def spec_with(check, **spec):
    return {**SPEC, **spec, "claims": [{"id": "c", "text": "the paper says", "source": "Someone 2020, Table 1",
                                        "check": check}]}


def verdicts(check, records, spread="std"):
    """The claim's verdict and its comparisons' outcomes on ``records``."""
    spec = spec_with(check)
    claim, = load_claims(spec)
    return judge_claim(claim, collect(spec, records), spread)


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_t_quantile_matches_the_printed_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-3)
    assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-9)


def test_incomplete_beta_and_f_cdf_match_closed_forms():
    x = 0.4  # I_x(2, 3) is the Beta(2, 3) CDF: sum over j = 2..4 of C(4, j) x^j (1 - x)^(4 - j)
    assert incomplete_beta(2, 3, x) == pytest.approx(sum(math.comb(4, j) * x ** j * (1 - x) ** (4 - j)
                                                         for j in range(2, 5)), abs=1e-12)
    assert t_cdf(0.0, 3) == 0.5 and f_cdf(1.0, 4, 4) == pytest.approx(0.5)
    assert f_cdf(6.388, 4, 4) == pytest.approx(0.95, abs=1e-4)  # F(0.95; 4, 4) = 6.388
    assert t_cdf(1.0, 1) == pytest.approx(0.5 + math.atan(1.0) / math.pi)  # Cauchy


def test_welch_interval_by_hand():
    a, b = Sample.of([1.0, 2.0, 3.0]), Sample.of([4.0, 6.0, 8.0])  # variances 1 and 4, n = 3
    df = 50 / 17  # (1/3 + 4/3)² / ((1/3)² / 2 + (4/3)² / 2)
    assert welch_satterthwaite_df([(1 / 3, 3), (4 / 3, 3)]) == pytest.approx(df)
    interval = linear_interval([(1.0, a), (-1.0, b)])
    half = t_quantile(0.975, df) * math.sqrt(5 / 3)
    assert interval.estimate == -4.0 and interval.df == pytest.approx(df)
    assert (interval.low, interval.high) == pytest.approx((-4.0 - half, -4.0 + half))
    exact = linear_interval([(1.0, Sample(3.0, 0.0, 2))], constant=-1.0)
    assert (exact.low, exact.high, exact.df) == (2.0, 2.0, None)


def test_holds_when_significant_in_the_claimed_direction():
    verdict, (outcome,) = verdicts('W4A4 "Config 2" > W4A4 "Config 1"',
                                   seeds(4, "better", TIGHT_HIGH) + seeds(4, "plain", TIGHT_LOW))
    assert verdict == HOLDS and outcome.verdict == HOLDS
    assert "left − right +5.00, 95% CI [" in outcome.reason and "Welch t" in outcome.reason
    assert outcome.reason.endswith("significant in the claimed direction")
    assert outcome.numbers == 'W4A4 "Config 2" 90.10 ± 0.10 (3 seeds); W4A4 "Config 1" 85.10 ± 0.10 (3 seeds)'


def test_fails_when_significant_the_other_way():
    verdict, (outcome,) = verdicts('W4A4 "Config 1" >= W4A4 "Config 2"',
                                   seeds(4, "better", TIGHT_HIGH) + seeds(4, "plain", TIGHT_LOW))
    assert verdict == FAILS and outcome.reason.endswith("significant the other way")


def test_inconclusive_when_the_difference_is_inside_the_spread():
    verdict, (outcome,) = verdicts('W4A4 "Config 2" > W4A4 "Config 1"',
                                   seeds(4, "better", TIGHT_HIGH) + seeds(4, "plain", WIDE))
    assert verdict == INCONCLUSIVE and outcome.reason.endswith("difference inside the seeds' spread")


@pytest.mark.parametrize("records, reason", [
    (seeds(4, "better", [90.0]) + seeds(4, "plain", TIGHT_LOW), 'W4A4 "Config 2" has 1 seed (a test needs 2)'),
    (seeds(4, "better", TIGHT_HIGH), 'W4A4 "Config 1" not run'),
    (seeds(4, "better", TIGHT_HIGH) + seeds(4, "plain", TIGHT_LOW[:2])
     + [record(4, 0.0, seed=2, method="plain", status="diverged")], 'W4A4 "Config 1" diverged (1 of 3 runs)'),
])
def test_inconclusive_says_which_cell_cannot_be_tested(records, reason):
    verdict, (outcome,) = verdicts('W4A4 "Config 2" > W4A4 "Config 1"', records)
    assert verdict == INCONCLUSIVE and outcome.verdict == INCONCLUSIVE and outcome.reason == reason


DIVERGED = [0.0, 0.0, 0.0]


@pytest.mark.parametrize("check, verdict", [
    ('W4A4 "Config 2" > W4A4 "Config 1"', HOLDS),
    ('W4A4 "Config 1" >= W4A4 "Config 2"', FAILS),
    ('W4A4 "Config 1" < W4A4 "Config 2"', HOLDS),
])
def test_a_cell_that_diverged_in_every_run_ranks_below_one_that_finished_every_run(check, verdict):
    records = seeds(4, "better", WIDE) + seeds(4, "plain", DIVERGED, status="diverged")
    claim_verdict, (outcome,) = verdicts(check, records)
    assert claim_verdict == outcome.verdict == verdict
    assert outcome.reason.startswith(
        'W4A4 "Config 1" diverged in every run (3), W4A4 "Config 2" finished in every seed (3)')


@pytest.mark.parametrize("check, records", [
    # one diverged run of two: the cell is not "did not train"
    ('W4A4 "Config 2" > W4A4 "Config 1"', seeds(4, "better", WIDE) + seeds(4, "plain", [85.0])
     + [record(4, 0.0, seed=5, method="plain", status="diverged")]),
    # one seed of the finished cell, or one run of the diverged one: too few
    ('W4A4 "Config 2" > W4A4 "Config 1"', seeds(4, "better", [90.0]) + seeds(4, "plain", DIVERGED, status="diverged")),
    ('W4A4 "Config 2" > W4A4 "Config 1"', seeds(4, "better", WIDE) + seeds(4, "plain", [0.0], status="diverged")),
    # both diverged; against FP; a gap over more cells; a spread
    ('W4A4 "Config 2" > W4A4 "Config 1"', seeds(4, "better", DIVERGED, status="diverged")
     + seeds(4, "plain", DIVERGED, status="diverged")),
    ('W4A4 "Config 1" >= FP - 1', seeds(4, "plain", DIVERGED, status="diverged")),
    ('W2A2 "Config 2" - W2A2 "Config 1" > W4A4 "Config 2" - W4A4 "Config 1"',
     seeds(2, "better", WIDE) + seeds(2, "plain", DIVERGED, status="diverged")
     + seeds(4, "better", WIDE) + seeds(4, "plain", TIGHT_LOW)),
    ('spread(W4A4 "Config 2") < spread(W4A4 "Config 1")',
     seeds(4, "better", WIDE) + seeds(4, "plain", DIVERGED, status="diverged")),
])
def test_divergence_decides_nothing_else(check, records):
    verdict, outcomes = verdicts(check, records)
    assert verdict == INCONCLUSIVE and all(o.verdict == INCONCLUSIVE for o in outcomes)
    assert "diverged" in outcomes[0].reason or "1 seed" in outcomes[0].reason


def test_a_chain_holds_only_if_every_link_holds_and_fails_if_one_fails():
    check = 'W4A4: "Config 3" >= "Config 2" >= "Config 1"'
    best = seeds(4, "best", [95.0, 95.2, 95.1])
    _, outcomes = verdicts(check, best + seeds(4, "better", TIGHT_HIGH) + seeds(4, "plain", TIGHT_LOW))
    assert [o.verdict for o in outcomes] == [HOLDS, HOLDS]
    verdict, outcomes = verdicts(check, best + seeds(4, "better", TIGHT_HIGH) + seeds(4, "plain", WIDE))
    assert verdict == INCONCLUSIVE and [o.verdict for o in outcomes] == [HOLDS, INCONCLUSIVE]
    verdict, outcomes = verdicts(check, best + seeds(4, "better", TIGHT_LOW) + seeds(4, "plain", TIGHT_HIGH))
    assert verdict == FAILS and [o.verdict for o in outcomes] == [HOLDS, FAILS]


def test_sets_and_scopes_stand_for_every_combination():
    spec = spec_with('*: all("Config 2", "Config 3") > "Config 1" and W2A2, W4A4: "Config 3" > 80')
    claim, = load_claims(spec)
    assert [str(c) for c in claim.comparisons] == [
        'W2A2 "Config 2" > W2A2 "Config 1"', 'W2A2 "Config 3" > W2A2 "Config 1"',
        'W4A4 "Config 2" > W4A4 "Config 1"', 'W4A4 "Config 3" > W4A4 "Config 1"',
        'W2A2 "Config 3" > 80', 'W4A4 "Config 3" > 80']
    records = [r for bits in (2, 4) for r in seeds(bits, "best", [95.0, 95.2]) + seeds(bits, "better", TIGHT_HIGH)
               + seeds(bits, "plain", TIGHT_LOW)]
    verdict, outcomes = judge_claim(claim, collect(spec, records), "std")
    assert verdict == HOLDS and len(outcomes) == 6


def test_a_cell_against_fp_uses_the_one_sample_interval_and_abs_folds_it():
    near = seeds(4, "better", [89.9, 90.0, 90.1], fp=90.0)
    verdict, (outcome,) = verdicts('W4A4 "Config 2" >= FP - 0.5', near)
    assert verdict == HOLDS and "one-sample t, df 2.0" in outcome.reason and outcome.numbers.endswith("FP 90.00")
    assert verdicts('abs(W4A4 "Config 2" - FP) <= 0.5', near)[0] == HOLDS
    assert verdicts('abs(W4A4 "Config 2" - FP) <= 0.05', near)[0] == INCONCLUSIVE
    assert verdicts('abs(W4A4 "Config 2" - FP) <= 0.5', seeds(4, "better", [80.0, 80.1, 79.9]))[0] == FAILS


def test_gaps_between_columns_use_welch_satterthwaite_over_four_cells():
    records = (seeds(2, "better", [70.0, 70.2, 70.1]) + seeds(2, "plain", [60.0, 60.2, 60.1])
               + seeds(4, "better", TIGHT_HIGH) + seeds(4, "plain", [89.0, 89.2, 89.1]))
    verdict, (outcome,) = verdicts('W2A2 "Config 2" - W2A2 "Config 1" > W4A4 "Config 2" - W4A4 "Config 1"', records)
    assert verdict == HOLDS and "Welch–Satterthwaite t over 4 cells" in outcome.reason


def test_a_record_field_is_judged_like_top1():
    records = seeds(4, "better", TIGHT_HIGH)
    for r, cosine in zip(records, (0.995, 0.996, 0.997)):
        r["weight_cosine_mean"] = cosine
    verdict, (outcome,) = verdicts('W4A4: field(weight_cosine_mean, "Config 2") > 0.99', records)
    assert verdict == HOLDS and outcome.numbers == 'field(weight_cosine_mean, W4A4 "Config 2") 0.9960 ± 0.0010 (3 seeds)'
    verdict, (outcome,) = verdicts('W4A4: field(weight_cosine_mean, "Config 2") > 0.99', seeds(4, "better", TIGHT_HIGH))
    assert verdict == INCONCLUSIVE and outcome.reason == 'field(weight_cosine_mean, W4A4 "Config 2"): no run records weight_cosine_mean'


def test_spreads_are_compared_by_the_f_test():
    tight = seeds(4, "better", [90.0, 90.01, 90.02, 90.0, 90.01])
    wide = seeds(4, "plain", [85.0, 88.0, 82.0, 86.0, 84.0])
    verdict, (outcome,) = verdicts('W4A4: spread("Config 2") < spread("Config 1")', tight + wide)
    assert verdict == HOLDS and "F test (4, 4 df)" in outcome.reason
    assert verdicts('W4A4: spread("Config 1") <= spread("Config 2")', tight + wide)[0] == FAILS
    flat = seeds(4, "better", [10.0, 10.0]) + seeds(4, "plain", [10.0, 10.0])
    verdict, (outcome,) = verdicts('W4A4: spread("Config 2") < spread("Config 1")', flat)
    assert verdict == INCONCLUSIVE and outcome.reason == "neither cell varies over its seeds"


@pytest.mark.parametrize("check, message", [
    ('W4A4 "Config 2"', "expected a comparison (> >= < <=) at position 16, got the end"),
    ('W9A9 "Config 2" > 1', "unknown column 'W9A9'; columns: W2A2, W4A4"),
    ('"Config 2" > 1', '"Config 2" needs a column'),
    ('W4A4 "Config" > 1', '"Config" matches several rows'),
    ('W4A4 "Config 9" > 1', '"Config 9" matches no row'),
    ('W4A4 "PACT" > 1', "row 'PACT' quotes the paper only"),
    ('W4A4 "Config 2" > 1 $', "unexpected character '$' at position 21"),
    ('W4A4 "Config 2" > 1 2', "expected a comparison operator or 'and' at position 21, got '2'"),
    ('W4A4 > 1', "expected a row label in quotes or all(...) after W4A4 at position 6, got '>'"),
    ('1 < 2', "1 < 2: names no cell"),
    ('W4A4: spread("Config 2") < 1', "spread() can only be compared with another spread()"),
    ('W4A4: abs("Config 2" - FP) < "Config 1"', "abs() can only be compared with numbers and FP"),
    ('W4A4: abs("Config 2") + abs("Config 1") < 3', "one abs() per comparison"),
    ('W4A4: all("Config 2" > 1', "expected ')' at position 22, got '>'"),
])
def test_a_malformed_claim_names_the_spec_the_claim_and_the_problem(check, message):
    with pytest.raises(ClaimError) as error:
        load_claims(spec_with(check))
    assert str(error.value).startswith("table spec demo, claim 'c': ") and message in str(error.value)


def test_a_claim_needs_every_field_and_a_unique_id():
    with pytest.raises(ClaimError, match="table spec demo, claim 'c' lacks source, check"):
        load_claims({**SPEC, "claims": [{"id": "c", "text": "t"}]})
    twice = spec_with('W4A4 "Config 2" > 1')
    with pytest.raises(ClaimError, match="table spec demo, claim ids repeated: c"):
        load_claims({**twice, "claims": twice["claims"] * 2})


def test_a_malformed_claim_in_a_spec_is_one_error_line_of_the_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(spec_with('W4A4 "Config 9" > 1')))
    monkeypatch.setattr(cli, "CONF_TABLES", tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--published", "--published-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("qbench-table: error: table spec demo, claim 'c': \"Config 9\" matches no row")


def test_the_table_lists_each_claim_with_the_papers_numbers_and_ours():
    spec = spec_with('W4A4: "Config 2" > "Config 1" and W4A4: spread("Config 2") < spread("Config 1")',
                     command="qbench -m experiment=demo")
    text, _ = render(spec, seeds(4, "better", TIGHT_HIGH) + seeds(4, "plain", TIGHT_LOW))
    assert "**c** — ours: inconclusive" in text and "> the paper says — Someone 2020, Table 1" in text
    assert "Verdict rule: each comparison is decided on the seeds' values at 95%, two-sided." in text
    assert "| comparison | paper | ours | ours verdict |" in text
    assert ('| `W4A4 "Config 2" > W4A4 "Config 1"` | 70.00 > 69.00 | W4A4 "Config 2" 90.10 ± 0.10 (3 seeds); '
            'W4A4 "Config 1" 85.10 ± 0.10 (3 seeds) | holds: left − right +5.00') in text
    assert '| `spread(W4A4 "Config 2") < spread(W4A4 "Config 1")` | 1.00 < 2.00 |' in text
    assert text.index("| `W4A4") < text.index("Made by: `qbench -m experiment=demo")
    assert "**The paper's claims" not in render(SPEC, [])[0]


def test_the_compared_table_gives_a_verdict_for_your_runs_and_for_qbench():
    spec = spec_with('W4A4: "Config 2" > "Config 1"')
    yours = Runs("yours", "your", seeds(4, "better", TIGHT_HIGH) + seeds(4, "plain", TIGHT_LOW), "runs/records")
    published = Runs("qbench", "qbench's", seeds(4, "better", [90.0]), "results/published")
    text, _ = render_compared(spec, yours, published)
    assert "**c** — yours: holds · qbench: inconclusive" in text
    assert "| comparison | paper | yours | yours verdict | qbench | qbench verdict |" in text
    assert 'inconclusive: W4A4 "Config 2" has 1 seed (a test needs 2); W4A4 "Config 1" not run |' in text


def test_claims_page_lists_every_table_spec(tmp_path):
    records = tmp_path / "published"
    for r in seeds(4, "lsq", [91.0, 91.2]):
        write_record(r, records / f"{r['config']['seed']}.json")
    assert main(["--claims", "--published-dir", str(records), "--out-dir", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "claims.md").read_text()
    assert page.startswith("# The papers' claims, checked on qbench's runs")
    assert "Verdict rule: each comparison is decided" in page
    assert page.endswith(f"Made by: `qbench-table --claims --published-dir {records}`.\n")
    for path in sorted(CONF_TABLES.glob("*.yaml")):
        spec = load_spec(path.stem, CONF_TABLES)
        if not spec.get("claims"):
            assert f"## {spec['name']}\n" not in page  # a protocol measurement of ours states none
            continue
        count = len(spec["claims"])
        assert f"- [{spec['name']}](tables/{spec['name']}.md) — {spec['title']}: {count} claim" in page
        assert f"\n## {spec['name']}\n" in page
        assert all(f"**{claim['id']}** — ours: " in page for claim in spec["claims"])


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_TABLES.glob("*.yaml")))
def test_every_table_spec_of_a_paper_states_sourced_claims_that_parse(name):
    spec = load_spec(name, CONF_TABLES)
    claims = load_claims(spec)
    assert claims or not quotes_paper(spec), f"conf/table/{name}.yaml quotes the paper but states no claims"
    assert all("papers.md" in claim.source and claim.comparisons for claim in claims)
