"""Synthetic spine-metastasis CT phantom: anatomy, lesions, benign mimics, scanner effects."""
