"""Seed 004 (Chen et al. 2023): benign vs malignant calcified thyroid nodules on B-mode ultrasound.

Xception (the paper's best) and DenseNet169, each with the paper's head (FC 1024 -> 512 -> 512 -> 2,
dropout 0.5), score the nodule's rectangle cropped from the B-mode image; the node averages the
backbones it is configured to run. :mod:`.model` serves a bundle, :mod:`.train` writes one
(demo weights trained on the phantoms of :mod:`model_zoo.phantoms.us`).
"""
