"""Moved: the jax.export artifact is age_jax/inference/export_jax.py. This name stays only for
age_jax/export_onnx.py, which imports input_contract, inference_function, calibration_of and
center_crop_offsets from here; delete this file when export_onnx moves into age_jax/inference."""
from age_jax.inference.export_jax import (calibration_of, center_crop_offsets, inference_function,  # noqa: F401
                                          input_contract)
