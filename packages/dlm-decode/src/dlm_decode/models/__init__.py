"""Native transformers implementations of released masked diffusion LMs (LLaDA, Dream)."""
