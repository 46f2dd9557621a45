"""Bridges to outside projects (segment-anything, pytorch-grad-cam, Quantus).

They live here rather than in a top-level ``adapters`` package because that import name belongs
to the published ``adapters`` distribution (AdapterHub) on PyPI.
"""
