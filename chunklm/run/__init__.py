"""A training run: its workdir on disk (resolved config, tokenizer copy, checkpoints, metrics) and the trained model
restored from it. Train writes runs through this layer; eval, bench, experiments and the CLI read them through it."""
