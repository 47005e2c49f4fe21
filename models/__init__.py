"""pyconv's model zoo: builders writing ``.npz`` models, and importers of trained weights.

``python -m models <name> --out file.npz`` builds one model (``python -m models --list``).
"""
