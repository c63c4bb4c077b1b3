import time

from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table


def test_medians_rank_a_slower_function_slower():
    times = interleaved_medians(
        {"fast": lambda: None, "slow": lambda: time.sleep(0.01)}, repeats=3, warmup=1
    )
    assert times["slow"] >= 0.009 > times["fast"]


def test_append_section_creates_and_appends(tmp_path):
    path = tmp_path / "docs" / "benchmarks.md"
    append_section(path, "thing", "python bench.py", markdown_table(["a", "b"], [[1, 2]]), ["note"])
    append_section(path, "other", "python other.py", "body")
    text = path.read_text()
    assert text.startswith("# Benchmarks") and text.count("## ") == 2
    assert (
        "| a | b |\n|---|---|\n| 1 | 2 |" in text
        and "`python bench.py`" in text
        and "- note" in text
    )
