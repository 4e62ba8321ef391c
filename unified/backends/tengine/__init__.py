"""tengine: an emulation of OPEN AI LAB Tengine's uint8 quantization (quant_tool_uint8) on the integer engine."""
