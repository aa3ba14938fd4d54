"""The tools that built and probed the bundled toy-world base model: pretraining, a VAE round-trip probe and
a subject-learnability probe. Run them from the repository's root, e.g. ``python -m tools.toyworld.pretrain_toyworld``.
"""
