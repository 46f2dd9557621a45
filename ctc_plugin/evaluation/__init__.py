"""Evaluation metrics and protocols: localisation, faithfulness, invariance, sensitivity, sanity.

A reusable library: every metric takes a model, images, the classes to explain and maps (or a
method with the signature ``method(model, images, target, feature_mask)``) and depends on
nothing of this package above the input and target checks. The classes are ``target=``, as in
Captum (``targets=``, their earlier name, still works with a ``FutureWarning``). The benchmark
that runs them on the zoo models is [`ctc_plugin.harness`][ctc_plugin.harness].
"""
