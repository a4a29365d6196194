"""`chunklm classify`: downstream classification on top of a trained (or fresh) byte-level model: labelled records,
a pooled representation and a linear or MLP head, training, evaluation (accuracy, per-class F1, confusion matrix)
and prediction."""
