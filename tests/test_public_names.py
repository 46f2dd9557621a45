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


def test_a_module_lists_only_its_own_classes_and_functions_in_all():
    """A name has one home: ``cam.transformers.__all__`` repeated eleven names of
    ``cam.reshapes`` (the reference and ``import *`` met them twice), ``ctc.interception``'s
    two of ``ctc.calls`` and ``ctc.errors``, ``runs.plan``'s ``Shard`` and ``cli``'s
    ``CLIError``. A package's ``__init__`` gathers names from its modules; a module does not."""
    import importlib
    import inspect
    import pkgutil

    import ctc_plugin

    repeated = []
    for info in pkgutil.walk_packages(ctc_plugin.__path__, "ctc_plugin."):
        if info.ispkg:
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                if value.__module__ != info.name:
                    repeated.append(f"{info.name}.{name} (home: {value.__module__})")
    assert not repeated, repeated
