"""The flags of `chunklm lm-eval`."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  p = sub.add_parser(
    "lm-eval",
    help="lm-evaluation-harness tasks (accuracy) on a trained model",
    description="Run lm-evaluation-harness tasks on a trained run (H-Net, byte or BPE Transformer alike) through "
    "chunklm's adapter: multiple-choice and loglikelihood tasks in one forward pass per request, batched; "
    "perplexity tasks in rolling windows; generation tasks greedily until the task's stop strings. Nothing "
    "downloads: use the offline tasks of `chunklm tasks make`, a folder of your own task YAMLs (--include-path), "
    "or a standard task (e.g. hellaswag) whose dataset is already in the Hugging Face cache. Prints the harness's "
    "table and writes its results JSON into the run (lm_eval/results_<time>.json). Needs chunklm[eval].",
  )
  p.set_defaults(body="lm-eval")
  options.add_workdir(p)
  p.add_argument("--tasks", required=True, help="comma-separated harness task or group names")
  p.add_argument(
    "--include-path",
    action="append",
    default=[],
    metavar="DIR",
    help="a folder of task YAML files (repeatable), e.g. what `chunklm tasks make` wrote",
  )
  p.add_argument("--limit", type=float, default=None, help="at most N documents per task (below 1: a fraction)")
  p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples per prompt (default: the task's)")
  p.add_argument("--batch-size", type=int, default=32, help="requests per forward pass (default: 32)")
  p.add_argument(
    "--stride",
    type=int,
    default=None,
    help="rolling-window step of perplexity tasks, in bytes (tokens); default data.seq_len (disjoint windows)",
  )
  options.add_seed(p, "few-shot sampling and harness")
  options.add_run_overrides(p)
  g = options.group(p, "output")
  g.add_argument("--no-write", action="store_true", help="do not write the results into the run")
  g.add_argument("--json", default=None, metavar="PATH", help="also write the harness's results JSON here")
  options.add_progress(p)
