"""The paper's figures as commands.

* :mod:`~experiments.correlation`: Fig. 2B, per-layer correlation of each
  rule's update with backprop's on untrained orthogonal networks (and, with
  ``--drift``, the same as the weights drift away from orthogonality);
* :mod:`~experiments.training`: Fig. 2A, test accuracy over training for
  every regime.

Each writes CSVs and one PNG into ``--out`` (``results/`` by default); the notebooks in
``notebooks/`` redraw the figures from those CSVs.
"""
