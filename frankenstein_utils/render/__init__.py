"""Stage 2, a mesh rasterizer: camera and framing, z-buffer fragments, depth and attribute buffers (numba and torch)."""
