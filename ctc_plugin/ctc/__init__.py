"""CTC (Contribution To Classification).

Gates, per-operation rules, bias sharing, the Captum class and the Zennit composite.
"""
