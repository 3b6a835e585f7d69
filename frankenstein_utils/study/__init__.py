"""Stage 10, studies that train, score and ship: the 2017 study's variants, the flagship's ablation, the buffers report."""
