"""Bundled examples: the MLP training script and the demo dataset generator."""
