"""Research experiments and procedures of tracemark (not installed, not maintained as product).

Importable from the repository root (``python -m research.eval run --quick``); they use only
tracemark's public API. See research/README.md.
"""
