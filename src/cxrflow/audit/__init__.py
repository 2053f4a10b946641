"""The shortcut audit: does a candidate look at the lungs, or at where the film came from?

In the paper's Dataset_1 every normal and bacterial image is a child's (Kermany) and every
COVID-19 image an adult's (Cohen), so a model can reach the paper's accuracy by telling
children from adults. Measured on the real sample, a small CNN does exactly that: it calls 30
of 32 adult bacterial pneumonias and 10 of 14 adult "No Finding" X-rays of Cohen's collection
COVID-19. Test accuracy cannot show this; three tests can, each reported with a 95 % interval
from a patient-level bootstrap (:func:`cxrflow.stats.patient_bootstrap_indices`, seeded):

1. **Same-source controls** (:func:`control_test`). Cohen's collection also holds adult
   non-COVID frontal X-rays; ingest keeps them as the ``control`` cohort, never in a dataset
   (:func:`cxrflow.data.split.select_controls`). The share the model calls COVID-19 is
   reported overall and per finding; the verdict uses the controls whose label is one of the
   model's classes (``normal``, ``bacterial`` for Dataset_1): a viral pneumonia has no class
   of its own there and resembles COVID-19, so calling it COVID-19 proves nothing.
2. **Source probe** (:func:`source_probe`). A logistic regression, cross-validated by patient
   groups, predicts the data source from the model's penultimate features (the input of the
   layer named ``classifier``). It is trained and scored on images whose label occurs in more
   than one source (the test split's Kermany normal / bacterial images and Cohen's controls of
   those labels), and its AUC compares images of the same label only: on the test split alone
   the source *is* the label (every COVID-19 image is Cohen's), so any good model would look
   guilty. High AUC: the features encode where an image came from beyond what it shows.
3. **Lung-field ablation** (:func:`ablation_test`). The centred box of side
   ``mask_fraction`` x image side (:func:`lung_mask`) is set to each image's mean grey, so
   only the borders remain (shoulders, corners, burned-in markers and labels); a model that
   still beats chance there reads something other than the lungs. Scored by balanced accuracy
   (mean per-class recall), whose chance level is exactly ``1 / n_classes`` whatever the class
   mix; plain accuracy is reported too. :func:`plot_mask` draws the mask for the report.

:func:`audit_verdict` turns the numbers into a decision with the thresholds of
:class:`~cxrflow.config.AuditParams` (point estimates against thresholds; the CIs are
reported in each reason). Too few controls make a test *inconclusive*, not failed.

Modules, one job each: :mod:`~cxrflow.audit.images` (inputs and model outputs),
:mod:`~cxrflow.audit.estimates` (bootstrap intervals), :mod:`~cxrflow.audit.checks` (the three
tests) and :mod:`~cxrflow.audit.verdict` (one model's audit and its decision). Import from here.
"""

from __future__ import annotations

from cxrflow.audit.checks import (
    COVID,
    INCONCLUSIVE,
    NOT_APPLICABLE,
    PROBE_FOLDS,
    ablation_test,
    control_test,
    source_probe,
)
from cxrflow.audit.estimates import (
    CONFIDENCE,
    Groups,
    accuracy_with_ci,
    rate_with_ci,
    stratified_auc,
)
from cxrflow.audit.images import (
    PREDICT_BATCH,
    control_arrays,
    load_images,
    lung_mask,
    mask_images,
    penultimate_features,
    plot_mask,
    predict_proba,
)
from cxrflow.audit.verdict import audit_model, audit_verdict

__all__ = [
    "CONFIDENCE",
    "COVID",
    "INCONCLUSIVE",
    "NOT_APPLICABLE",
    "PREDICT_BATCH",
    "PROBE_FOLDS",
    "Groups",
    "ablation_test",
    "accuracy_with_ci",
    "audit_model",
    "audit_verdict",
    "control_arrays",
    "control_test",
    "load_images",
    "lung_mask",
    "mask_images",
    "penultimate_features",
    "plot_mask",
    "predict_proba",
    "rate_with_ci",
    "source_probe",
    "stratified_auc",
]
