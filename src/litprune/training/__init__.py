"""Training-recipe pieces that need no Trainer: token budgets and the learning-rate schedule."""
