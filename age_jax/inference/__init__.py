"""Inference: from a trained checkpoint to what runs elsewhere (exports) and what they share."""
