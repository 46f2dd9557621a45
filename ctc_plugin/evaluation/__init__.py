"""Evaluation metrics and protocols: localisation, faithfulness, invariance, sensitivity."""
