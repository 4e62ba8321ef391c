"""rknn: an emulation of Rockchip RKNN-Toolkit2's w8a8 quantization on the integer engine."""
