"""`evaluate` metric: pass@k of candidate programs, executed in the codellama-toolkit sandbox.

A drop-in for the Hub's `code_eval` (same inputs and outputs) that can be loaded offline and never runs code
outside bubblewrap (or, where bubblewrap is unusable, says so in every result):

    import evaluate
    from evals.metrics import path
    metric = evaluate.load(path())  # .../evals/metrics/code_eval_sandboxed
    pass_at_k, results = metric.compute(predictions=[[cand1, cand2]], references=[test_code], k=[1, 2])
"""

import datasets
import evaluate

_DESCRIPTION = "pass@k (unbiased estimator) of candidate programs run against test code in a bubblewrap sandbox."
_KWARGS = """
predictions: list of lists of candidate programs (one list per problem).
references: list of test programs (one per problem); each candidate is run as candidate + "\\n" + reference.
k: list of k values (default [1, 10, 100]); each k <= the number of candidates.
timeout: seconds per program (default 3.0). workers: parallel sandboxes. require_isolation: refuse without bwrap.
Returns (pass_at_k, results): {"pass@k": float}, and per problem a list of (candidate_index, {"passed",
"result", "status", "kind"}) like code_eval.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class CodeEvalSandboxed(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("string")), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, k=(1, 10, 100), timeout=3.0, workers=None, require_isolation=False):
        from evals.passk import pass_at_k
        from evals.sandbox import SandboxConfig, SandboxPool

        programs, owners = [], []
        for task, (candidates, test) in enumerate(zip(predictions, references)):
            for j, candidate in enumerate(candidates):
                programs.append(candidate + "\n" + test)
                owners.append((task, j))
        config = SandboxConfig(timeout=timeout, workers=workers, require_isolation=require_isolation)
        with SandboxPool(config) as pool:
            outcomes = pool.run(programs)
        results = [[] for _ in predictions]
        for (task, j), r in zip(owners, outcomes):
            verdict = "passed" if r.passed else ("timed out" if r.status == "timeout" else f"failed: {r.kind}")
            results[task].append(
                (
                    j,
                    {
                        "task_id": task,
                        "completion_id": j,
                        "passed": r.passed,
                        "result": verdict,
                        "status": r.status,
                        "kind": r.kind,
                        "isolation": r.isolation,
                    },
                )
            )
        counts = [(len(c), sum(x[1]["passed"] for x in res)) for c, res in zip(predictions, results)]
        n_min = min(n for n, _ in counts)
        ks = [k] if isinstance(k, int) else list(k)
        scores = {f"pass@{kk}": sum(pass_at_k(n, c, kk) for n, c in counts) / len(counts) for kk in ks if kk <= n_min}
        return scores, results
