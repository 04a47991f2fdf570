"""ERA: Entropy Regularizing Activation (arXiv 2510.08549).

Output activations that keep the entropy of a model's output distribution above a floor by
construction, so the training loss needs no entropy term.
"""

__version__ = "0.1.0"
