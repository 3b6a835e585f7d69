"""Stage 4, every torch Dataset and the sets behind them: photos, fitted pairs, synthetic depth sets, appearance buffers."""
