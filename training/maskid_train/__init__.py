"""Training code for maskid's masked-face embedder (not part of the installed package).

Run with ``PYTHONPATH=training`` from the repository root; see training/README.md.
"""
