"""Helpers with nothing litprune-specific (this floor imports nothing from litprune).

Map: `atomic` (files, JSON and directories published whole or not at all), `suggest` ("did you mean" hints).
"""
