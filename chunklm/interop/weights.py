"""A run's parameters as one safetensors file (`chunklm export`) and back into a run directory (`chunklm import`),
so models can be shared without pickles or orbax.

Tensors are named by their path in the model (e.g. `backbone.encoder.blocks.0.mixer.in_proj.kernel`, float32, shapes
as the model holds them); the metadata holds the format tag, the resolved config (YAML), the step, where it came from
and, for a token model, its tokenizer (base64). Import checks every tensor's name and shape against the config's
model and writes a parameters-only run (run/imported.py).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct

import numpy as np
import safetensors
import safetensors.numpy
from etils import epath

from chunklm.config import CONFIG_FORMAT, Config, Refused, dump_yaml, from_dict, load_json, load_yaml
from chunklm.data.tokenizer import Tokenizer
from chunklm.errors import UserError
from chunklm.model.functional import named_leaves, params_from_named
from chunklm.run.imported import write_params_run
from chunklm.run.trained import abstract_params, open_run
from chunklm.storage.paths import is_remote, location

FORMAT = "chunklm-weights-1"


def _no_file_above(dest: epath.Path) -> None:
  """A one-line UserError when a file stands where a directory above `dest` must be."""
  for parent in dest.parents:
    if parent.exists():
      if not parent.is_dir():
        raise UserError(f"--out {dest}: {parent} is a file, not a directory")
      return


def new_dir(out: str | os.PathLike) -> epath.Path:
  """The directory `--out` names, which must not exist or be empty (checked before any slow work)."""
  dest = location(out, "--out")
  if dest.exists() and not dest.is_dir():
    raise UserError(f"--out {dest} is a file; name a new (or empty) directory")
  if dest.exists() and any(dest.iterdir()):
    raise UserError(f"--out {dest} already exists and is not empty; choose a new directory")
  if not is_remote(dest):
    _no_file_above(dest)
  return dest


def _export_dest(out: str | os.PathLike) -> epath.Path:
  """The file `--out` names: not a directory, and no file where a directory above it must be."""
  dest = location(out, "--out")
  if is_remote(dest):
    return dest
  if dest.is_dir():
    raise UserError(f"--out {dest} is a directory; name the file to write, e.g. {dest / 'model.safetensors'}")
  _no_file_above(dest)
  return dest


def _save_local(tensors: dict[str, np.ndarray], meta: dict, dest: epath.Path) -> None:
  """save_file, then the mode an ordinary new file gets (safetensors writes through a private temporary file, so
  its result would be readable by its owner only)."""
  try:
    dest.parent.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(tensors, os.fspath(dest), metadata=meta)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(dest, 0o666 & ~mask)
  except (OSError, safetensors.SafetensorError) as e:
    raise UserError(f"--out {dest}: cannot write it ({str(e).strip().splitlines()[0][:200]})") from None


def export_weights(workdir: str | os.PathLike, out: str | os.PathLike) -> tuple[int, int]:
  """Writes the newest checkpoint of `workdir` to `out`; returns (tensors, step)."""
  dest = _export_dest(out)
  run = open_run(workdir, log=lambda *a, **k: None)
  tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in named_leaves(run.params).items()}
  meta = {"format": FORMAT, "config": dump_yaml(run.cfg), "step": str(run.step), "source": str(workdir)}
  if run.tokenizer is not None and run.tokenizer.path is not None:  # the workdir's copy, or data.tokenizer
    meta["tokenizer"] = base64.b64encode(run.tokenizer.path.read_bytes()).decode("ascii")
  if is_remote(dest):
    dest.write_bytes(safetensors.numpy.save(tensors, metadata=meta))  # one object, written whole
  else:
    _save_local(tensors, meta, dest)
  return len(tensors), run.step


def _remote_metadata(path: epath.Path) -> dict:
  """The metadata of a safetensors object, from its header alone (8 bytes of length, then JSON)."""
  with path.open("rb") as f:
    (length,) = struct.unpack("<Q", f.read(8))
    if length > 100 << 20:
      raise ValueError(f"a header of {length:,} bytes")
    header = load_json(f.read(length), limit=None)
  if not isinstance(header, dict):
    raise ValueError("its header is not a JSON object")
  return header.get("__metadata__") or {}


def read_metadata(path: str | os.PathLike) -> dict:
  """The chunklm metadata of a weights file; a one-line UserError for a file that is not one."""
  where = location(path, "weights file")
  if not where.is_file():
    raise UserError(f"{where}: no such weights file")
  try:
    if is_remote(where):
      meta = _remote_metadata(where)
    else:
      with safetensors.safe_open(os.fspath(where), framework="numpy") as f:
        meta = f.metadata() or {}
  except Exception as e:  # noqa: BLE001  (safetensors raises its own error types for files that are not safetensors)
    raise UserError(f"{where}: not a safetensors file ({str(e).strip().splitlines()[0][:160]})") from None
  if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
    raise UserError(f"{where}: its metadata is not a mapping of names to strings")
  if meta.get("format") != FORMAT or "config" not in meta:
    raise UserError(
      f"{where}: a safetensors file without chunklm metadata (format {meta.get('format')!r}); only "
      "files written by `chunklm export` can be imported (official H-Net checkpoints: chunklm convert)"
    )
  return meta


def weights_config(path: str | os.PathLike, meta: dict) -> Config:
  """The config in a weights file's metadata: YAML chunklm did not write (config.untrusted), resolved (no base)."""
  try:
    tree = load_yaml(meta["config"])
  except Refused as e:
    raise UserError(f"{path}: its config metadata: {e}") from None
  if not isinstance(tree, dict):
    raise UserError(f"{path}: its config metadata is not a mapping of sections (model, data, train, ...)")
  fmt = tree.pop("config_format", None)
  if fmt is not None and fmt != CONFIG_FORMAT:
    raise UserError(
      f"{path} was written by another chunklm version (config format {fmt!r}; this one reads {CONFIG_FORMAT})"
    )
  if "base" in tree:
    raise UserError(f"{path}: its config names a base ({tree['base']!r}); `chunklm export` writes resolved configs")
  try:
    return from_dict(Config, tree)
  except UserError as e:
    raise UserError(f"{path}: its config does not load here ({e})") from None


def _step(path: str | os.PathLike, meta: dict) -> int:
  step = meta.get("step", "0")
  if not re.fullmatch(r"[0-9]{1,18}", step):
    raise UserError(f"{path}: its step {step[:40]!r} is not a whole number")
  return int(step)


def _tokenizer(path: str | os.PathLike, meta: dict, cfg: Config) -> bytes | None:
  """The tokenizer file in the metadata (None when there is none), checked to be one that fits the model."""
  if "tokenizer" not in meta:
    if cfg.data.tokenizer and not location(cfg.data.tokenizer, "data.tokenizer").is_file():
      raise UserError(
        f"{path}: holds no tokenizer, and its config's data.tokenizer {cfg.data.tokenizer} is not found here"
      )
    return None
  try:
    data = base64.b64decode(meta["tokenizer"], validate=True)
    tok = Tokenizer(model_proto=data)
  except binascii.Error as e:
    raise UserError(f"{path}: its tokenizer metadata is damaged (not base64: {e})") from None
  except UserError as e:
    raise UserError(f"{path}: its tokenizer metadata is damaged ({str(e).removeprefix('tokenizer None: ')})") from None
  if cfg.data.tokenizer and tok.vocab_size != cfg.model.vocab_size:
    raise UserError(
      f"{path}: its tokenizer has {tok.vocab_size} pieces, its config's model.vocab_size is {cfg.model.vocab_size}"
    )
  return data


def import_weights(path: str | os.PathLike, out: str | os.PathLike) -> epath.Path:
  """Writes the run directory `out` from a file written by export_weights; returns it."""
  new_dir(out)
  meta = read_metadata(path)
  cfg = weights_config(path, meta)
  step, tokenizer = _step(path, meta), _tokenizer(path, meta, cfg)
  _, like = abstract_params(cfg)
  try:
    where = location(path)
    tensors = safetensors.numpy.load(where.read_bytes()) if is_remote(where) else safetensors.numpy.load_file(path)
    params = params_from_named(like, tensors, str(path))
  except ValueError as e:
    raise UserError(str(e)) from None
  origin = {"what": f"imported from {path}", "weights": str(path), "source": meta.get("source", ""), "step": step}
  return write_params_run(out, cfg, params, step, origin, tokenizer)
