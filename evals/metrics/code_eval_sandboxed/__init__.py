"""The sandboxed code_eval metric (loaded by path with `evaluate.load`)."""
