"""The backend-agnostic half of unified: API, hook contract, models, images, calibration."""
