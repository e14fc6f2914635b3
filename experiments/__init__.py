"""Experiments as configs, and the paper's figures, as commands run from the repository root
(``python -m experiments.NAME``).

An experiment that trains is a file ``experiments/grids/NAME.yaml``: a list of config stacks (a regime
of ``conf/`` plus small files of ``conf/variants/``), seeds and shared ``fit`` options. Its results lie
in ``results/NAME/RUN_sSEED/`` (``metrics.csv`` beside the resolved ``config.yaml`` the run trained
with) with a README naming the command that reruns it and the one that rebuilds its tables.

Running:

* :mod:`~experiments.stacks`: run an experiment's stacks through ``fit``, resume them, sync their curves;
* :mod:`~experiments.training`: Fig. 2A, every regime with test accuracy every fraction of an epoch;
* :mod:`~experiments.peers`: TP, FA and GAIT-S on a short budget, with diagnostics on a fixed batch;
* :mod:`~experiments.correlation`, :mod:`~experiments.orthogonality`, :mod:`~experiments.conv_correlation`:
  Fig. 2B (MLP, CNN) and the orthogonality drift, on untrained networks.

Reading (tables and figures from the CSVs):

* :mod:`~experiments.curves`: a run's epochs from its ``metrics.csv`` and ``config.yaml``;
* :mod:`~experiments.headline`: an experiment's table over seeds and its curves (``mlp_gap``);
* :mod:`~experiments.conv_comparison`: the CNN's runs (``cnn``);
* :mod:`~experiments.fair_table`: the fair CNN-against-MLP table (``fair_cnn_mlp``);
* :mod:`~experiments.full_length`: the paper's 200 epochs (``paper200``);
* :mod:`~experiments.report`: Fig. 2B's and Fig. 2A's tables.

Every regime is a config in ``conf/``, built through ``fit``'s own parser
(:func:`experiments.common.build_regime`, :func:`experiments.common.stack_cli`).
"""
