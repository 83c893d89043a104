"""Chat-prompt HumanEval with and without the chat stop rule: tokens generated, and whether anything changed.

`codellama eval humaneval --prompt chat` (and the main job's chat scores) stop an answer where nothing after
it can change the completion taken from it (`evals.humaneval_chat.answer_end`): once its first code block
closes, or, for bare code, at the first HumanEval stop line after the function's `def`. This runs the same
greedy chat prompts both ways, in one process, and prints the tokens each way, the answers that hit the token
cap, and how many completions (what is executed) are identical. Fenced answers must all be identical; a bare
answer can differ (it now ends where a raw-prompt completion would).

    python benchmarks/bench_chat_stop.py                                   # SmolLM2-135M-Instruct, 48 problems
    python benchmarks/bench_chat_stop.py --model runs/family/train-code/final --problems 164
"""

from __future__ import annotations

import argparse
import functools
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="checkpoint directory or named base")
    parser.add_argument("--problems", type=int, default=48, help="first N HumanEval problems (default 48)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the cap (the main job's chat cap: 256)")
    parser.add_argument("--batch", type=int, default=64, help="rows decoded together (the main job's: 64)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    args = parser.parse_args()

    from codellama.bases import resolve_base
    from codellama.config import serving_dtype
    from codellama.generation import GenerationRequest, HFGenerator, SamplingParams
    from evals.humaneval_chat import answer_end, chat_prompt, completion_from_answer
    from evals.problems import load_problems

    path = resolve_base(args.model)
    dtype = serving_dtype(args.dtype)
    generator = HFGenerator.from_pretrained(path, batch_size=args.batch, overflow="skip", dtype=dtype)
    problems = list(load_problems().values())[: args.problems]
    print(f"{path.name}: {len(problems)} chat prompts, greedy, <= {args.max_new_tokens} tokens, {dtype}")
    answers = {}
    for rule in (True, False):
        requests = [
            GenerationRequest(
                chat_prompt(p, generator.tokenizer),
                params=SamplingParams(
                    max_new_tokens=args.max_new_tokens,
                    stop_at=functools.partial(answer_end, entry_point=p.entry_point) if rule else None,
                ),
            )
            for p in problems
        ]
        start = time.perf_counter()
        answers[rule] = generator.generate(requests)
        seconds = time.perf_counter() - start
        tokens = sum(len(a.token_ids) for a in answers[rule])
        capped = sum(a.finish_reason == "length" for a in answers[rule])
        print(f"  stop rule {'on ' if rule else 'off'}: {tokens:6d} tokens in {seconds:6.0f} s, {capped} at the cap")
    with_rule, without = (sum(len(a.token_ids) for a in answers[r]) for r in (True, False))
    same = [
        completion_from_answer(p, a.text) == completion_from_answer(p, b.text)
        for p, a, b in zip(problems, answers[True], answers[False])
    ]
    print(
        f"tokens with the rule / without: {with_rule / max(1, without):.2f}; identical completions {sum(same)}/{len(same)}"
    )
    for p, ok, b in zip(problems, same, answers[False]):
        if not ok:
            fenced = "```" in b.text
            print(f"  differs: {p.task_id} ({'fenced' if fenced else 'bare code'} answer)")


if __name__ == "__main__":
    main()
