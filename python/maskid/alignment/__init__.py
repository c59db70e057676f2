"""Landmarks -> chips. `similarity` fits a face's 5 points to a model's template (each model's
`ModelContract` says which); `dlib_chip` reproduces dlib's own chip cutting for the dlib
network; `warp` cuts and normalises a batch of chips in the C++ core (CPU, or CUDA)."""
