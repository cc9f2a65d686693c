"""Faces: MTCNN detection with five landmarks, and the one canonical aligned crop.

Below age_jax.data: imports nothing else from age_jax.
"""
from age_jax.faces.canonical import (CANONICAL_TEMPLATE, UTKFACE_CHIP_SIZE, align_to_canonical,
                                     canonical_template, canonical_transform)
from age_jax.faces.detector import Face, FaceDetector

__all__ = ["CANONICAL_TEMPLATE", "UTKFACE_CHIP_SIZE", "Face", "FaceDetector", "align_to_canonical",
           "canonical_template", "canonical_transform"]
