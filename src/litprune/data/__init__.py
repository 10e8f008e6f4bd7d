"""Data: text in, token windows out, reproducibly and resumably.

Map: `corpus` (the embedded corpus: the running Python's stdlib source), `tokenizer` (its byte-level BPE),
`prepare` (text -> tokenized uint16/uint32 shards + manifest), `cache` (where prepared artifacts live), `store`
(memory-mapped shards), `slices` (named, disjoint token ranges), `order` (seeded read order, rank-aware
micro-batches), `datamodule` (`TokenDataModule`, what a run's YAML names).
"""
