"""Stage 11, what users run: apply to depth maps, generate labelled faces, the explorer, the notebook runner, the downstream test."""
