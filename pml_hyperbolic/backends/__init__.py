"""Who computes: the C kernels (CPU float32), the Triton kernels (CUDA) or plain torch ops."""
