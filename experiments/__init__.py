"""The paper's figures as commands, run from the repository root (``python -m experiments.NAME``).

* :mod:`~experiments.correlation`: Fig. 2B, per-layer correlation of each rule's update
  with backprop's on untrained orthogonal networks;
* :mod:`~experiments.orthogonality`: the same correlation as the weights drift away from
  orthogonality;
* :mod:`~experiments.training`: Fig. 2A, test accuracy over training for every regime;
* :mod:`~experiments.headline`: GAIT-N against backprop, one ``fit`` run per cause;
* :mod:`~experiments.peers`: why TP, FA and GAIT-S trail, on a short budget;
* :mod:`~experiments.conv_correlation`: Fig. 2B for the invertible CNN;
* :mod:`~experiments.report`: the README's tables from the CSVs.

Every regime is a config in ``conf/``, built through ``fit``'s own parser
(:func:`experiments.common.build_regime`). Each command writes CSVs and a PNG into
``--out`` (``results/`` by default); the notebooks in ``notebooks/`` redraw the figures
from those CSVs.
"""
