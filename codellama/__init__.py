"""codellama-toolkit core: presets, tokenizer, checkpoints, data, training and the CLI."""

__version__ = "0.1.0"
