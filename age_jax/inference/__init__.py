"""Inference: what a user does with a trained workdir, one layer above training.

  restore.py            the weights of a workdir's checkpoint (never the optimizer state)
  intervals.py          which calibration a path reads, calibrating on the spot, intervals applied
  predict.py            photos -> faces -> ages and intervals (Predictor); files in, CSV/JSON out
  export_jax.py         the portable jax.export artifact (preprocessing, network, decoder, interval)
  jaxpr_onnx.py         any JAX function -> ONNX, one rule per primitive (symbolic_pooling.py: P-Net's pool)
  export_onnx.py        export_jax's function as ONNX (onnxruntime alone)
  export_faces.py       the photo export: MTCNN's nets + the age model + faces/portable.py's numpy glue
  webapp.py             the web page and JSON API (webapp.html; uploads.py: the capped upload)
  pasted_faces.py       the check that a face gives the same age wherever it sits in a photo
  photo_calibration.py  calibration and coverage along the path photos take (detected, pasted)

It stands on one shared function each for preprocessing, decoding and intervals
(age_jax/inference_rules.py, the formulations' decoders, age_jax/conformal.py), which stay below
the training layer because training's own evaluation and final calibration use them; faces are
found and cropped by age_jax/faces, as builds do. Nothing in train, data, models or faces imports
this package; evaluate.py and faeb_benchmark.py sit above it (tests/test_imports.py).
"""
