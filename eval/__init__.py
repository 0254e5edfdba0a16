"""Evaluation: tasks, checkers, scoring, reports."""
