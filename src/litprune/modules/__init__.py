"""LightningModules. Map: `causal_lm` (`CausalLM`, the one module every arm trains; its first weights come from an
init strategy in `litprune.inits`)."""
