"""Tests of hf_calibprune.calibration (a package, so test module names may repeat across test folders)."""
