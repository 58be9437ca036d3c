"""The index and mining benchmarks run end to end at tiny sizes and write their JSON.

The benchmarks themselves are not part of the test suite; this only checks that two of them
(one in-process, one running both tools in subprocesses) still work against dualenc's API.
"""

import json
from importlib.util import find_spec

import pytest

# the peer's side of the mining benchmark; found without importing it (slow)
pytestmark = pytest.mark.skipif(
    find_spec("sentence_transformers") is None or find_spec("datasets") is None,
    reason="the benchmarks' peer needs sentence-transformers and datasets (pip install 'dualenc[bench]')",
)


@pytest.fixture
def benchmarks(repo_root, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_root))
    import benchmarks.index_bench
    import benchmarks.mining

    return benchmarks


def test_index_and_mining_benchmarks_write_results(benchmarks, tmp_path):
    smoke = ["--smoke", "--results-dir", str(tmp_path)]
    benchmarks.index_bench.main([*smoke, "--real", "64", "--synthetic", "640", "--queries", "2"])
    # one peer batch size: each is a subprocess loading sentence-transformers, and one shows the path
    benchmarks.mining.main([*smoke, "--pairs", "80", "--no-top-check", "--peer-batch-sizes", "32"])

    index = json.loads((tmp_path / "index_bench.json").read_text())
    assert index["smoke"] is True
    assert {"cores", "cpu_model", "avx512_bf16", "amx_bf16", "date"} <= set(index["machine"])
    assert len(index["results"]) == 6
    tuned = [r for r in index["results"] if "tuned on queries" in r["variant"]]
    assert len(tuned) == 2 and all(r["manifest_recall"]["tuned_on"] == "queries" for r in tuned)
    untuned = [r for r in index["results"] if r["variant"].endswith(", IVF")]
    assert len(untuned) == 1 and untuned[0]["manifest_recall"]["tuned_on"] == "code vectors"
    for result in index["results"]:
        assert {"build_codes_per_sec", "latency_ms", "recall_at_10", "index"} <= set(result)
        assert 0.0 <= result["recall_at_10"] <= 1.0
        latency, ratios = result["latency_ms"], result["hybrid_over_dense"]
        for what in ("encode_search", "search"):
            for q in ("p50", "p99"):
                assert ratios[what][q] == latency[f"hybrid_{what}"][q] / latency[what][q]
    exact = [r for r in index["results"] if r["index"].startswith("IDMap2")]
    assert exact and all(r["recall_at_10"] == 1.0 for r in exact)

    mining = json.loads((tmp_path / "mining.json").read_text())
    assert set(mining["timing"]) == {"dualenc", "sentence-transformers (batch 32)"}
    assert mining["fastest_peer"] == "sentence-transformers (batch 32)"
    assert mining["peer_seconds_over_dualenc_seconds"] > 0
    assert mining["agreement"]["random"]["pairs_compared"] > 0
    assert all(t["median_peak_rss_mb"] > 0 for t in mining["timing"].values())
