"""Evaluation metrics and protocols: localisation, faithfulness, invariance, sensitivity, sanity.

A reusable library: every metric takes a model, images, targets and maps (or a method with the
signature ``method(model, images, targets, feature_mask)``) and depends on nothing of this
package above the input and target checks. The benchmark that runs them on the zoo models is
[`ctc_plugin.harness`][ctc_plugin.harness].
"""
