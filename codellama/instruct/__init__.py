"""Self-instruct data with unit tests (Code Llama - Instruct's recipe) as a resumable pipeline."""

from codellama.instruct.pipeline import STAGES, InstructDataConfig, Sampling, run_pipeline

__all__ = ["STAGES", "InstructDataConfig", "Sampling", "run_pipeline"]
