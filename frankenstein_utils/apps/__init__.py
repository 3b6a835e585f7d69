"""Stage 11, what users run: apply, generate labelled faces, the explorer, the notebook runner, the downstream test."""
