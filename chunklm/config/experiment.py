"""The config of one experiment: its six sections and the checks that span sections (a token model needs a
tokenizer; every routing stage's static chunk capacity must hold the documents a training window can contain)."""

from __future__ import annotations

import dataclasses

from chunklm.config.capacity import stage_capacities
from chunklm.config.data import DataConfig
from chunklm.config.schema import EvalConfig, KernelsConfig, MeshConfig, ModelConfig, TrainConfig
from chunklm.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig = ModelConfig()  # the network
  data: DataConfig = DataConfig()  # documents and windows
  train: TrainConfig = TrainConfig()  # optimizer, schedule, checkpoints
  eval: EvalConfig = EvalConfig()  # evaluation and samples
  mesh: MeshConfig = MeshConfig()  # device mesh axes
  kernels: KernelsConfig = KernelsConfig()  # chunk-op backend

  def __post_init__(self):
    if self.model.vocab_size != 256 and not self.data.tokenizer:
      raise ConfigError(
        f"model.vocab_size {self.model.vocab_size} is for a token model: set data.tokenizer to a "
        "sentencepiece model (`chunklm tokenizer train`), or use vocab_size 256 for bytes"
      )
    if self.model.num_stages:
      stage_capacities(self.model, self.data)  # raises ConfigError when a capacity cannot hold the documents
