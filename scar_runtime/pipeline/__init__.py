"""The path of one volume through the network.

``preprocess`` (intensity statistics, sagittal slices resampled onto the network's 1 mm grid,
the exact inverse back to the input grid: shared with training, so the two cannot drift) ->
``segmenter`` (batches through a backend's Runner, slice smoothing, post-processing, key-points
on the input grid) -> ``straighten`` (a tilted column measured on the first answer, the image
rotated upright and segmented again). Reading and writing files is ``scar_runtime.io``'s job,
the network itself ``scar_runtime.backends``', the clean-up ``scar_runtime.postprocess``'.
"""
