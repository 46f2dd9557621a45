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


#: Names in the package's text that do not resolve on purpose: a retired name its refusal
#: names, and an instance attribute a docstring links to.
RETIRED_OR_INSTANCE = {
    "ctc_plugin.harness.store.RunStore",
    "ctc_plugin.cam.layers.StageTracer.modules",
}


def _resolves(name: str) -> bool:
    """Whether ``name`` (``ctc_plugin.module.Attribute...``) imports and resolves."""
    import importlib

    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest module path, then attributes
        try:
            value = importlib.import_module(".".join(parts[:cut]))
            break
        except ImportError:
            continue
    try:
        for part in parts[cut:]:
            value = getattr(value, part)
    except (AttributeError, ImportError):  # a retired name's refusal is an ImportError
        return False
    return True


def test_every_package_name_the_package_s_messages_and_docstrings_give_resolves():
    """Moving the block tables to ``cam.known_blocks`` left Integrative CAM's refusal naming
    ``ctc_plugin.cam.transformers.TIMM_BLOCKS``, which no longer existed; the files module's
    docstring named ``ctc_plugin.explainer.Explainer.load``."""
    import ast
    import re
    from pathlib import Path

    import ctc_plugin

    unresolved = set()
    for path in Path(ctc_plugin.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            elif isinstance(node, ast.JoinedStr):  # an f-string's literal parts
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            else:
                continue
            for name in set(re.findall(r"\bctc_plugin(?:\.[A-Za-z_]\w*)+", text)):
                if not _resolves(name):
                    unresolved.add(name)
    assert unresolved == RETIRED_OR_INSTANCE, sorted(unresolved - RETIRED_OR_INSTANCE)
