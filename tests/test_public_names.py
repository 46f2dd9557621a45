"""The names a user of the package meets are importable from ``ctc_plugin`` itself."""

from __future__ import annotations


def test_the_extension_point_and_the_errors_users_meet_are_package_names():
    """``register_rule``, the Zennit composite's refusal and the Explainer's warning were only
    in deep modules (``ctc_plugin.ctc.operations``, ``ctc.errors``, ``explainer.attribution``)."""
    import ctc_plugin
    from ctc_plugin.ctc.errors import CompositeOutsideAttributorError
    from ctc_plugin.ctc.operations import register_rule
    from ctc_plugin.explainer.attribution import ClassifierMismatchWarning

    assert ctc_plugin.register_rule is register_rule
    assert ctc_plugin.CompositeOutsideAttributorError is CompositeOutsideAttributorError
    assert ctc_plugin.ClassifierMismatchWarning is ClassifierMismatchWarning
    for name in ("register_rule", "CompositeOutsideAttributorError", "ClassifierMismatchWarning"):
        assert name in ctc_plugin.__all__
