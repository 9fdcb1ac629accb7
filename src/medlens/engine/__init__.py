"""Running the pipeline: train (plan, fit, calibrate), evaluate and predict, around a run folder."""
