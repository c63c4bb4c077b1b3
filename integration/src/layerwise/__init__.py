"""layerwise: the integration package. Real corpora, tokenizers and packing (`layerwise.data`),
pre-training on DDP / FSDP2 (`layerwise.train`), evaluation (`layerwise.eval`), the quickstart
recipe and the `layerwise` command line.

    from layerwise.train import PretrainConfig, pretrain
    result = pretrain(PretrainConfig.from_yaml("run.yaml", overrides=["train.steps=300"]))
"""

from layerwise.__about__ import __version__

__all__ = ["__version__"]
