"""litprune: build small language models by pruning a large parent, and test honestly whether that beats
training the same small model from scratch under token-matched budgets."""

__version__ = "0.1.0"
