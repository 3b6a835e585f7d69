"""Stage 4, every torch Dataset and the sets behind them: photos, fitted pairs, depth sets, appearance buffers."""
