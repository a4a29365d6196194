"""The flags of `chunklm tasks make | noisy`."""

from __future__ import annotations

from chunklm.cli import options
from chunklm.eval.perturb import PERTURBATIONS
from chunklm.eval.task_files import DEFAULT_N, DEFAULT_NOISY_ON, DEFAULT_STRENGTHS, FAMILIES
from chunklm.eval.task_probes import PROBES


def add(sub) -> None:
  p = sub.add_parser(
    "tasks",
    help="make offline lm-evaluation-harness tasks from a text you own, or noisy copies of a harness task",
    description="Evaluation tasks for lm-evaluation-harness, made from a local text; nothing is downloaded.",
  )
  tsub = p.add_subparsers(dest="tasks", required=True, metavar="WHAT")
  t = tsub.add_parser(
    "make",
    help="write harness task folders (character probes, cloze, noisy cloze) made from --text",
    description="Write task folders that `lm_eval --include_path DIR --tasks ...` runs offline: "
    "probes/: CUTE-style character probes (spell, spell_inverse, contains_char, contains_word, orthographic, "
    "insert, delete, substitute, swap) on words of the text, each as multiple choice ranked by likelihood "
    "(chunklm_cute_<probe>, group chunklm_cute) and as generation scored by exact match (chunklm_cute_<probe>_gen, "
    "group chunklm_cute_gen); cloze/: pick the true ~40-byte continuation of a ~200-byte context from four "
    "(chunklm_cloze, acc and acc_norm); noisy/: the cloze items (or --noisy-on others) with their contexts "
    "perturbed, one task per perturbation and strength (chunklm_cloze_noisy_swap_s0.05, ...), one group per "
    "strength (chunklm_cloze_noisy_s0.05), so the drop per perturbation is acc(noisy) - acc(clean) on the same "
    "items. DIR/README.md records the source's sha256, the seed and the counts; the same text and seed give the "
    "same files. The data paths in the YAMLs are absolute: make the folder again after moving it.",
  )
  t.set_defaults(body="tasks make")
  g = options.group(t, "data")
  g.add_argument("--text", required=True, metavar="FILE", help="the text to make the tasks from (a local file)")
  g.add_argument(
    "--families",
    default=",".join(FAMILIES),
    help=f"comma-separated subset of: {', '.join(FAMILIES)} (default: %(default)s)",
  )
  g.add_argument("--n", type=int, default=DEFAULT_N, help="items per task, at most (default: %(default)s)")
  options.add_seed(t, "sampling (words, positions, distractors, gold order) and perturbation")
  g.add_argument(
    "--context-bytes", type=int, default=200, help="cloze: bytes of context before an item (default: %(default)s)"
  )
  g.add_argument(
    "--continuation-bytes",
    type=int,
    default=40,
    help="cloze: bytes of each continuation to choose from, cut at a word end (default: %(default)s)",
  )
  n = options.group(t, "noise", "the noisy family: multiple-choice tasks with perturbed contexts")
  _add_noise(n)
  n.add_argument(
    "--noisy-on",
    default=",".join(DEFAULT_NOISY_ON),
    metavar="TASKS",
    help="which clean tasks get noisy copies: cloze and/or probe names (" + ", ".join(PROBES) + "); "
    "default: %(default)s",
  )
  n.add_argument("--noisy-choices", action="store_true", help="perturb the choices too, not only the contexts")
  options.group(t, "output").add_argument(
    "--out",
    required=True,
    metavar="DIR",
    help="where to write the folders: a new or empty folder, or one this command wrote (replaced)",
  )
  options.add_progress(t)
  _add_noisy(tsub)


def _add_noisy(tsub) -> None:
  t = tsub.add_parser(
    "noisy",
    help="write a multiple-choice harness task and its character-noised copies (accuracy under noise)",
    description="Build the requests of a multiple-choice lm-evaluation-harness task (e.g. hellaswag, with its "
    "data in the Hugging Face cache, or a task of --include-path) as the harness itself does, and write them as a "
    "clean task chunklm_<task> and noisy copies with the contexts perturbed (chunklm_<task>_noisy_<perturbation>_"
    "s<strength>, one group per strength). `chunklm lm-eval` on the clean task and its copies prints each copy's "
    "accuracy drop on the same items, paired, with a 95 % interval. Needs chunklm[eval].",
  )
  t.set_defaults(body="tasks noisy")
  g = options.group(t, "data")
  g.add_argument("--task", required=True, help="a multiple-choice harness task")
  g.add_argument("--include-path", action="append", default=[], metavar="DIR", help="a folder of task YAMLs")
  g.add_argument("--limit", type=int, default=None, help="the first N documents (default: all)")
  options.add_seed(t, "perturbation")
  n = options.group(t, "noise")
  _add_noise(n)
  n.add_argument("--noisy-choices", action="store_true", help="perturb the choices too, not only the contexts")
  options.group(t, "output").add_argument(
    "--out", required=True, metavar="DIR", help="a new or empty folder, or one `chunklm tasks` wrote (replaced)"
  )


def _add_noise(n) -> None:
  """--strength and --perturbations, alike for `tasks make` and `tasks noisy`."""
  n.add_argument(
    "--strength",
    type=float,
    action="append",
    default=None,
    help="probability of touching a character, in [0, 1] (repeatable; default: "
    + " and ".join(f"{s:g}" for s in DEFAULT_STRENGTHS)
    + ")",
  )
  n.add_argument(
    "--perturbations", default="all", help="comma-separated subset of: " + ", ".join(PERTURBATIONS) + " (default: all)"
  )
