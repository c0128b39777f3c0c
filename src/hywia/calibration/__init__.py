"""Stage: calibration. Takes a model and a text source; gives calibration token samples (``texts``) and the
statistics methods need from them: one gradient pass (``gradients``) or per-layer activation statistics
from the layer-by-layer engine (``layerwise``); ``gram_space`` works on its d x d Gram matrices in bounded
space (in-place compaction, chunked finiteness checks). ``hub`` decides whether the dataset hub is usable."""
