"""From PyTorch and layer descriptions to TFLite artifacts whose layers carry their own precisions."""
