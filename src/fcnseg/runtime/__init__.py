"""Running trained nets fast: the optimised inference copy, backends (torch, ONNX Runtime),
export (ONNX, TorchScript, ExportedProgram) and the speed benchmark."""
