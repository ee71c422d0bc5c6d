"""Graph layer: the only package that imports DGL.

Builds the user-item training graph and item-item semantic graphs, samples minibatches and
partitions seed edges; everything it returns is plain torch (see :mod:`sea_dist.graph.batch`).
"""

import os
import warnings

# DGL picks its tensor backend at import time; pin it so no user config file can change it.
os.environ.setdefault("DGLBACKEND", "pytorch")
# torch 2.2 flags every sparse CSR tensor as beta; they are the message-passing workhorse here.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
