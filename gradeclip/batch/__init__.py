"""Dataset runs: many videos explained on Ray Data, with per-video outputs, failures recorded and summaries."""
