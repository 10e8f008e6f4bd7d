"""Helpers with nothing litprune-specific (this floor imports nothing from litprune).

Map: `atomic` (files, JSON and directories published whole or not at all), `suggest` ("did you mean" hints),
`errors` (an exception's cause chain), `hub` (one clear message when the Hugging Face Hub cannot serve a load),
`progress` (stderr progress bars for long steps, switched by `LITPRUNE_PROGRESS`).
"""
