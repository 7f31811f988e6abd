"""Sub-commands of the ``hf-calibprune`` command line, one module each (see :mod:`hf_calibprune.cli`)."""
