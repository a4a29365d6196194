"""The device mesh as the model and the kernels see it: axis names and logical rules (rules.py), and the mesh of the
computation being traced (context.py). Building a mesh from a config and placing a train state on it is
`chunklm.train.sharding`'s."""
