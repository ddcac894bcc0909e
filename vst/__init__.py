"""The VST (Video-to-Semantic-Tokens) model and its data: synthetic actions, the NTU RGB+D
reader and protocol splits, the prepared frame cache, training and evaluation.

Importing this package is light: torch is imported only by the modules that need it.
"""
