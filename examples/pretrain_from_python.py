"""Pre-train a small Llama on Shakespeare from Python, stop half way, resume, and evaluate.

    python examples/pretrain_from_python.py            # ~1 minute on 2 CPU cores

The same run as `layerwise pretrain --config examples/configs/pretrain_shakespeare.yaml`, shortened.
"""

from __future__ import annotations

from pathlib import Path

from layerwise.eval import perplexity
from layerwise.train import PretrainConfig, pretrain

CONFIG = Path(__file__).parent / "configs" / "pretrain_shakespeare.yaml"


def main() -> None:
    out = Path("runs/example_from_python")
    cfg = PretrainConfig.from_yaml(
        CONFIG, overrides=["train.steps=100", "train.save_every=50", f"train.out_dir={out}"]
    )
    # a pre-empted job: stop after step 50 (a checkpoint is written), then resume to the end
    pretrain(cfg, stop_at=50)
    result = pretrain(cfg.with_overrides(["train.resume=true"]))
    print(f"validation perplexity after {result.step} steps: {result.final_eval.perplexity:.1f}")

    # the final model is a plain Hugging Face folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerwise.data import prepare_data

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    data = prepare_data(cfg.data, cfg.train.block_size)
    print(f"whole validation split: {perplexity(model, data.validation, batch_size=16)}")
    prompt = tokenizer("ROMEO.\n", return_tensors="pt")
    sample = model.generate(**prompt, max_new_tokens=40, do_sample=True, top_k=40)
    print(tokenizer.decode(sample[0]))


if __name__ == "__main__":
    main()
