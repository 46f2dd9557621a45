"""Explainer / Explanandum: a trained mask network that explains a frozen classifier."""
