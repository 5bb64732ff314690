"""Statistics of a site's local validation of a zoo model.

The figures the papers report, computed the same way on a site's own cases: ROC AUC with its
DeLong 95% confidence interval, the paired DeLong test between two models (or two bundle
versions) on the same cases, accuracy / sensitivity / specificity / PPV / NPV / F1 at a
threshold, one-vs-rest per-class metrics for the 4-class NM model, and results by lesion size
band for the CT model. :mod:`model_zoo.validation.stats` is the public entry point;
:mod:`model_zoo.validation.delong` holds the DeLong computations.
"""
