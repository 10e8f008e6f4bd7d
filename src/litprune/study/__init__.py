"""Token-matched studies: `S_N`, `P_M-R_N` and `S_M+N` for every method and ratio from one YAML.

- `spec`: the study YAML as dataclasses, read strictly and checked before any work (`load_study`).
- `arms`: expansion into ordinary `litprune fit` configs on disk, in dependency order (`expand_study`).
- `runner`: `litprune study`: runs the arms as processes, resumes, evaluates, reports (`run_study`).
- `ledger`: tokens per phase (exact and as the paper labels them), FLOPs, and the budget checks.
- `records`: reading what finished arms left on disk.
- `report`, `plots`: results.csv / results.json / report.md and the Figure-1-style PNGs.
"""
