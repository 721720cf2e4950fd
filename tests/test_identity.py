"""The run identity read back from records: the ledger's run ids and the table's seed grouping
come from the same qbench.identity.result_config."""
import json
from pathlib import Path

import pytest

from qbench.identity import quantizes, run_id, seed_free_identity

PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"


def test_published_records_are_named_by_the_run_id_of_their_config():
    paths = sorted(PUBLISHED.glob("*.json"))
    assert paths
    for path in paths:
        cfg = json.loads(path.read_text())["config"]
        assert run_id(cfg) == path.stem


@pytest.mark.parametrize("method, expected", [("fp", False), ("lsq", True), ("attention_round", True),
                                              ("a_retired_method", True)])
def test_quantizes_reads_the_method_name_of_a_record(method, expected):
    assert quantizes({"method": {"name": method}}) is expected


def test_a_float_run_has_one_seed_free_identity_whatever_its_bits_and_seed():
    def fp_config(bits, seed):
        return {"method": {"name": "fp"}, "wbits": bits, "abits": bits, "seed": seed,
                "calib": {"seed": seed}, "recipe": {"name": "local", "qat": {"lr": bits}}}
    assert seed_free_identity(fp_config(2, 0)) == seed_free_identity(fp_config(4, 3))
    assert seed_free_identity({**fp_config(2, 0), "model": {"name": "a"}}) != seed_free_identity(fp_config(2, 0))
