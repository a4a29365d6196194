"""`chunklm bench data`: what a training run costs before its first step on a given corpus, and what it reads.

The run is the real one: `chunklm train` in a child process (one per process of a multi-process run), watched from
outside through /proc, so the figures hold whatever the data pipeline does inside (a memory-mapped cache, a stream,
worker processes). "Start-up" ends when the trainer logs that it is compiling the training step, right before step 1.
Per process: CPU seconds (user + system, the process and its descendants) and wall seconds to that line; peak
resident memory (VmHWM); bytes read through read syscalls (`rchar`: page-cache hits included, so it counts what the
process reads, not what the disk serves, which is `read_bytes`), at that line and at exit. Per run: the workdir's
size, split into checkpoints/ and everything else. Issue 35 asks these to stay flat as the corpus grows.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from chunklm import logs
from chunklm.errors import UserError
from chunklm.run.workdir import CHECKPOINTS

FIRST_STEP_LINE = "compiling the training step"  # train/trainer.py logs it right before dispatching step 1
SAMPLE_S = 0.1  # seconds between samples of /proc
TICKS = os.sysconf("SC_CLK_TCK")
MB = 1e6


@dataclasses.dataclass
class ProcessFigures:
  """One training process, from its start to its exit."""

  cpu_s: float | None  # user + system CPU seconds (with descendants) when the first-step line printed; None: never
  wall_s: float | None  # seconds from its start to that line
  total_s: float  # seconds from its start to its exit
  peak_rss_bytes: int  # the most resident memory it held (VmHWM)
  rchar_first_step: int | None  # bytes read through syscalls by the first-step line
  rchar: int  # ... by its exit
  read_bytes: int  # bytes it made the storage layer fetch (0 when the page cache held them)


@dataclasses.dataclass
class RunFigures:
  processes: list[ProcessFigures]  # in process-index order
  checkpoint_bytes: int  # the workdir's checkpoints/
  other_bytes: int  # everything else in the workdir (metrics, plots, caches a data pipeline keeps)


@dataclasses.dataclass
class _Sample:
  cpu_s: float
  rchar: int
  read_bytes: int


def _tree(pid: int) -> list[int]:
  """`pid` and its live descendants (through /proc/<pid>/task/<tid>/children)."""
  out, todo = [], [pid]
  while todo:
    p = todo.pop()
    out.append(p)
    try:
      for tid in os.listdir(f"/proc/{p}/task"):
        with open(f"/proc/{p}/task/{tid}/children") as f:
          todo.extend(int(c) for c in f.read().split())
    except OSError:  # it exited meanwhile
      continue
  return out


def _sample(pid: int) -> _Sample:
  """CPU seconds and bytes read by `pid` and its descendants: the live ones' own, plus what the kernel has folded
  into each process from the children it reaped (so the sum only grows while the tree works)."""
  cpu = rchar = read_bytes = 0
  for p in _tree(pid):
    try:
      with open(f"/proc/{p}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
      with open(f"/proc/{p}/io") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    except (OSError, ValueError):
      continue
    cpu += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    rchar, read_bytes = rchar + int(io["rchar"]), read_bytes + int(io["read_bytes"])
  return _Sample(cpu / TICKS, rchar, read_bytes)


def _hwm(pid: int) -> int:
  """The process's peak resident set so far, in bytes (0 once it has exited)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


class _Watch:
  """Watches one child: reads its output for the first-step line and samples /proc until it exits, without reaping
  it before the last sample (an exited, unreaped process still shows its totals), then reaps it with its rusage."""

  def __init__(self, cmd: list[str], label: str):
    self.label = label
    self.start = time.perf_counter()
    self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    self.tail: list[str] = []
    self.first: tuple[float, _Sample] | None = None
    self.last = _Sample(0.0, 0, 0)
    self.hwm = 0
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self) -> None:
    assert self.proc.stdout is not None
    for line in self.proc.stdout:
      if self.first is None and FIRST_STEP_LINE in line:
        self.first = (time.perf_counter() - self.start, _sample(self.proc.pid))
        logs.info(f"{self.label}: compiling step 1 after {self.first[0]:.1f} s")
      logs.debug(f"  | {line.rstrip()}")
      self.tail = (self.tail + [line.rstrip()])[-40:]

  def _exited(self) -> bool:
    return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

  def poll(self) -> bool:
    """Take a sample; True once the child has exited (and has been reaped)."""
    done = self._exited()
    now = _sample(self.proc.pid)
    self.last = _Sample(
      max(self.last.cpu_s, now.cpu_s), max(self.last.rchar, now.rchar), max(self.last.read_bytes, now.read_bytes)
    )
    self.hwm = max(self.hwm, _hwm(self.proc.pid))
    if not done:
      return False
    _, status, usage = os.wait4(self.proc.pid, 0)
    self.proc.returncode = os.waitstatus_to_exitcode(status)
    self.total_s = time.perf_counter() - self.start
    self.hwm = max(self.hwm, usage.ru_maxrss * 1024)  # kilobytes on Linux
    self.reader.join(timeout=10)
    return True

  def figures(self) -> ProcessFigures:
    wall, at = self.first if self.first is not None else (None, None)
    return ProcessFigures(
      cpu_s=at.cpu_s if at else None,
      wall_s=wall,
      total_s=self.total_s,
      peak_rss_bytes=self.hwm,
      rchar_first_step=at.rchar if at else None,
      rchar=self.last.rchar,
      read_bytes=self.last.read_bytes,
    )

  def kill(self) -> None:
    if self.proc.returncode is None:
      self.proc.kill()
      self.proc.wait()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def train_commands(
  data: list[str], workdir: Path, config: str, steps: int, overrides: list[str], processes: int
) -> list[list[str]]:
  """The `chunklm train` command line of each process: the config as it is (its train.steps, so its evaluation
  settings and the valid split they read are what a real run starts with) and `--stop-after steps`, which ends the
  run with a checkpoint after that many steps and before any final evaluation. Several processes meet through
  jax.distributed at a local coordinator (as tests/test_distributed.py runs them) and log with --verbose, which makes
  every process print the first-step line."""
  cmd = [sys.executable, "-m", "chunklm.cli", "train", "--config", config, "--workdir", str(workdir), "--no-progress"]
  for path in data:
    cmd += ["--data", path]
  for o in overrides:
    cmd += ["--set", o]
  cmd += ["--stop-after", str(steps)]
  if processes == 1:
    return [cmd]
  coordinator = f"localhost:{_free_port()}"
  multi = ["--verbose", "--distributed", "--coordinator", coordinator, "--num-processes", str(processes)]
  return [cmd + multi + ["--process-id", str(i)] for i in range(processes)]


def run_once(commands: list[list[str]], workdir: Path) -> RunFigures:
  """Start the processes of one run together, watch them to their exit, and measure the workdir they leave."""
  watches: list[_Watch] = []
  try:
    watches = [_Watch(c, f"process {i}" if len(commands) > 1 else "training") for i, c in enumerate(commands)]
    running = list(watches)
    while running:
      time.sleep(SAMPLE_S)
      running = [w for w in running if not w.poll()]
  finally:
    for w in watches:
      w.kill()
  for i, w in enumerate(watches):
    if w.proc.returncode != 0:
      said = next((line for line in reversed(w.tail) if line.strip()), "no output").split("error: ", 1)[-1]
      raise UserError(f"bench data: the training run (process {i}) failed with exit code {w.proc.returncode}: {said}")
  checkpoints = _size(workdir / CHECKPOINTS)
  return RunFigures([w.figures() for w in watches], checkpoints, _size(workdir) - checkpoints)


def _size(path: Path) -> int:
  """Bytes in the files under `path` (their apparent sizes; 0 when it is missing)."""
  total = 0
  for root, _, names in os.walk(path):
    for n in names:
      try:
        total += os.lstat(os.path.join(root, n)).st_size
      except OSError:
        pass
  return total


def machine() -> str:
  """This machine, without starting a JAX backend (which on a GPU would take the memory the runs need)."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
  except OSError:
    pass
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return f"{os.cpu_count()} CPUs ({model}), {memory:.0f} GiB RAM, Python {platform.python_version()}"


def _median(values: list):
  known = [v for v in values if v is not None]
  return statistics.median(known) if known else None


def median_run(runs: list[RunFigures]) -> RunFigures:
  """Each figure's median over the runs (per process index)."""
  procs = [
    ProcessFigures(
      **{f.name: _median([getattr(r.processes[i], f.name) for r in runs]) for f in dataclasses.fields(ProcessFigures)}
    )
    for i in range(len(runs[0].processes))
  ]
  return RunFigures(procs, _median([r.checkpoint_bytes for r in runs]), _median([r.other_bytes for r in runs]))


def _row(label: str, run: RunFigures) -> list[list[str]]:
  def num(x, scale=1.0, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x / scale)

  rows = []
  for i, p in enumerate(run.processes):
    rows.append(
      [
        label if len(run.processes) == 1 else f"{label} p{i}",
        num(p.cpu_s),
        num(p.wall_s),
        num(p.total_s),
        num(p.peak_rss_bytes, MB, "{:,.0f}"),
        num(p.rchar_first_step, MB, "{:,.0f}"),
        num(p.rchar, MB, "{:,.0f}"),
        num(p.read_bytes, MB, "{:,.0f}"),
        num(run.checkpoint_bytes, MB, "{:,.1f}") if i == 0 else "",
        num(run.other_bytes, MB, "{:,.1f}") if i == 0 else "",
      ]
    )
  return rows


HEADER = [
  "run",
  "CPU s to step 1",
  "wall s to step 1",
  "total s",
  "peak RSS MB",
  "rchar MB to step 1",
  "rchar MB",
  "read_bytes MB",
  "checkpoints MB",
  "other MB",
]


def print_table(runs: list[RunFigures], median: RunFigures | None) -> None:
  rows = [r for k, run in enumerate(runs) for r in _row(str(k + 1), run)]
  if median is not None:
    rows += _row("median", median)
  widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(HEADER)]
  for r in [HEADER, *rows]:
    print("  ".join(x.rjust(w) if c else x.ljust(w) for c, (x, w) in enumerate(zip(r, widths))))


def bench_data(
  data: list[str],
  config: str,
  steps: int,
  overrides: list[str],
  processes: int = 1,
  repeat: int = 1,
  workdir_root: str | None = None,
  keep: bool = False,
) -> dict:
  """Run `chunklm train` for `steps` steps on `data`, `repeat` times (one at a time, each in a fresh workdir under
  `workdir_root` or a temporary directory), print each run's figures and their median, and return them all."""
  root = Path(workdir_root) if workdir_root else Path(tempfile.mkdtemp(prefix="chunklm-bench-data-"))
  workdirs = [root / f"run-{k + 1}" for k in range(repeat)]
  if taken := [str(w) for w in workdirs if w.exists()]:
    raise UserError(f"bench data: {taken[0]} exists (a run there would resume): choose another --workdir-root")
  on_disk = sum(_size(Path(p)) if Path(p).is_dir() else Path(p).stat().st_size for p in data)
  print(f"config   : {config} {' '.join(overrides)} (--stop-after {steps})")
  print(f"data     : {', '.join(data)} ({on_disk / MB:,.0f} MB on disk)")
  print(f"run      : {steps} steps, {processes} process{'es' if processes > 1 else ''}, {repeat} time(s)")
  print(f"machine  : {machine()}")
  runs: list[RunFigures] = []
  try:
    for k, w in enumerate(workdirs):
      logs.info(f"run {k + 1} of {repeat}: chunklm train in {w}")
      runs.append(run_once(train_commands(data, w, config, steps, overrides, processes), w))
  finally:
    if not keep:
      for w in workdirs:
        shutil.rmtree(w, ignore_errors=True)
      if not workdir_root:
        shutil.rmtree(root, ignore_errors=True)
  median = median_run(runs) if repeat > 1 else None
  print_table(runs, median)
  if keep:
    print(f"workdirs kept under {root}")
  return {
    "config": config,
    "overrides": overrides,
    "data": data,
    "data_bytes_on_disk": on_disk,
    "steps": steps,
    "processes": processes,
    "machine": machine(),
    "runs": [dataclasses.asdict(r) for r in runs],
    "median": dataclasses.asdict(median or runs[0]),
  }
