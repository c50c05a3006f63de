"""benchmarks/compare.py: every curve of every results file it is given reaches the overlay, under its own label."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bench_compare", os.path.join(ROOT, "benchmarks", "compare.py"))
bench_compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_compare)


def results_file(path, name, script, variants):
    curves = {label: {"curves": {"eval/return": {"env_steps": [10, 20], "mean": [m, m + 1], "std": [0.0, 0.0],
                                                 "n_seeds": 3, "final_mean": m + 1, "final_std": 0.0}}}
              for label, m in variants.items()}
    with open(path, "w") as f:
        json.dump({"name": name, "script": script, "variants": curves}, f)
    return str(path)


def run_compare(monkeypatch, tmp_path, *paths):
    os.makedirs(tmp_path / "benchmarks" / "results", exist_ok=True)
    monkeypatch.setattr(bench_compare, "ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["compare.py", *paths, "--out", "overlay"])
    bench_compare.main()
    with open(tmp_path / "benchmarks" / "results" / "overlay.json") as f:
        return json.load(f)["curves"]


def test_curves_are_named_by_script_or_by_comparison_when_a_script_comes_twice(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    ab = results_file(tmp_path / "ab.json", "mcat-ab", "mcat.py", {"mcat": 1.0, "no_pt": 2.0})
    pearl = results_file(tmp_path / "pearl.json", "pearl-x", "pearl.py", {"default": 3.0})
    curves = run_compare(monkeypatch, tmp_path, ab, pearl)
    assert {k: c["final_mean"] for k, c in curves.items()} == {"mcat.py mcat": 2.0, "mcat.py no_pt": 3.0,
                                                                "pearl.py": 4.0}
    # two single-variant comparisons of one script would both be "mcat.py": every curve of that script is
    # then named by its comparison, and none overwrites another
    dense = results_file(tmp_path / "dense.json", "mcat-dense", "mcat.py", {"mcat": 5.0})
    sil = results_file(tmp_path / "sil.json", "mcat-sil", "mcat.py", {"sil": 6.0})
    curves = run_compare(monkeypatch, tmp_path, ab, dense, sil, pearl)
    assert {k: c["final_mean"] for k, c in curves.items()} == {
        "mcat-ab mcat": 2.0, "mcat-ab no_pt": 3.0, "mcat-dense mcat": 6.0, "mcat-sil sil": 7.0, "pearl.py": 4.0}
    assert curves["mcat-dense mcat"]["source"] == dense and curves["mcat-sil sil"]["source"] == sil


def test_the_same_file_twice_is_an_error(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    dense = results_file(tmp_path / "dense.json", "mcat-dense", "mcat.py", {"mcat": 1.0})
    with pytest.raises(SystemExit, match="given twice"):
        run_compare(monkeypatch, tmp_path, dense, dense)
