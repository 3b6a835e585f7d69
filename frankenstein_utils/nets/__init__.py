"""Stage 5, networks: the study's generators, encoders and discriminators, the flagship's and the peers'."""
