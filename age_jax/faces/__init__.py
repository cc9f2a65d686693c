"""Faces: MTCNN detection with five landmarks, choosing the face of an image, and the one
canonical aligned crop (its size for a run included). Used by the dataset builders and by
inference alike.

Below age_jax.data: imports nothing else from age_jax.
"""
from age_jax.faces.canonical import (CANONICAL_TEMPLATE, CROP_SIZE, UTKFACE_CHIP_SIZE, align_to_canonical,
                                     canonical_template, canonical_transform, run_crop_size)
from age_jax.faces.detector import Face, FaceDetector
from age_jax.faces.find import choose_face, detect, read_rgb

__all__ = ["CANONICAL_TEMPLATE", "CROP_SIZE", "UTKFACE_CHIP_SIZE", "Face", "FaceDetector", "align_to_canonical",
           "canonical_template", "canonical_transform", "choose_face", "detect", "read_rgb", "run_crop_size"]
