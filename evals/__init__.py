"""Evaluation: HumanEval pass@k with generated code run in a sandbox."""
