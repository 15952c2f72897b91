"""How the engine's sparse weights are stored: a strategy the engine always holds and delegates to.

base.py      the interface: the tensors the optimiser sees, the gradients a part may read, dense views for
             an update, what a storage can supply to a method's parts
masked.py    every sparse tensor stays dense with a mask (the default, `sparse.kernels=masked`)
compact.py   Linear / Conv layers keep only their active weights (kernels/compact_layers.py); the others
             stay masked
"""
