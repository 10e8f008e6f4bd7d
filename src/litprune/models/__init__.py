"""Models: Hugging Face Llama-family causal LMs, never reimplemented.

Map: `presets` (named Llama shapes and `build_llama_config`), `params` (total and non-embedding parameter
counts), `loading` (loading a checkpoint in fp32, family check), `positions` (a window length against
`max_position_embeddings`), `mask_packing` (keep-masks packed 1 bit per weight, the one packing of files and
callback state), `sparse_checkpoint` (a sparse model on disk: zeros in place + bit-packed keep-masks +
`sparsity.json`).
"""
