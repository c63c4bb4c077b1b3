"""How the `depth-probe` command loads a saved model: through the Auto classes after importing the
package its model type needs, in a fresh process too, and with one line naming the
`pip install` when that package is missing."""

import json
import sys

import depth_probe as dp
from depth_probe.cli import main, text_windows
from layerwise_core import tiny_bidirectional
from layerwise_core.testing import run_python

TEXT = "the cat sat on the mat 1 plus 2 is 3 the dog sat on a mat " * 6

_FRESH_CLI = """
import sys
from depth_probe.cli import main

assert "layerwise_core.bidirectional_llama" not in sys.modules  # nothing registered yet
sys.exit(main(sys.argv[1:]))
"""


def test_the_cli_probes_a_masked_diffusion_model_in_a_fresh_process(tmp_path, tokenizer):
    model = tiny_bidirectional(num_hidden_layers=3, vocab_size=40, mask_token_id=39)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_text(TEXT)
    # what the command must report: the probe of the saved model on the command's windows
    ids, mask = dp.encode_texts(tokenizer, text_windows(tokenizer, TEXT, 12, 2), 12)
    expected = dp.probe(model, ids, mask).block_influence.tolist()

    args = ["--text", tmp_path / "text.txt", "--max-length", "12", "--rows", "2", "--no-figures"]
    run_python(_FRESH_CLI, "--model", tmp_path / "model", "--out", tmp_path / "out", *args)
    payload = json.loads((tmp_path / "out" / "depth_probe.json").read_text())
    assert payload["probe"]["block_influence"] == expected  # bidirectional attention kept


def test_a_missing_package_is_one_line_naming_its_install(tmp_path, tokenizer, capsys, monkeypatch):
    folder = tmp_path / "coe"
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "coe", "vocab_size": 40}))
    (tmp_path / "text.txt").write_text(TEXT)
    monkeypatch.setitem(sys.modules, "coe_moe", None)  # coe-moe not installed
    args = ["--text", str(tmp_path / "text.txt"), "--max-length", "12", "--rows", "2"]
    code = main(["--model", str(folder), *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("depth-probe: error: ")
    assert "`pip install coe-moe` and `import coe_moe`" in err
    assert not (tmp_path / "o").exists()
