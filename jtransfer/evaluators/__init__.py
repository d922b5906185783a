"""Evaluators that score a model's representation without training its head.

`features.extract_features` runs a feature function over padded evaluation batches and returns
the real rows as host arrays; `fewshot` fits closed-form ridge classifiers on k examples per
class of those features. Both take the feature function as an argument, so a training loop can
call them with the current parameters at any step.
"""
