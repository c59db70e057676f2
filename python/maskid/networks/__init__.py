"""The embedding networks. `registry` names the shipped models and their measured settings;
`contract` is what each model states about its input (chip geometry, colour, normalisation);
`embedder` runs one (ONNX Runtime, or TensorRT through `tensorrt`); `dlib` and `openvino_ir`
read those families' own weight formats and rebuild them as ONNX."""
