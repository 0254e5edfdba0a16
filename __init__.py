"""trajtune: turn open LLMs into tool-calling agents (see README.md and DESIGN.md)."""

__version__ = "0.1.0"
