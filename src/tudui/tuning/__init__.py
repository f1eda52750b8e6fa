"""Optuna studies over training options: the search space (space.py), the study and its trials as runs (study.py)."""
