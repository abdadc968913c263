"""Triton Python-backend model that runs an ONNX file with onnxruntime on the CPU.

The local launcher copies this file as ``model.py`` next to each ONNX model, so
the wheel's tritonserver (which has only the Python backend) serves the same
``models/`` repository that a production Triton loads with its onnxruntime backend.
It runs inside Triton's Python stub, not in inferq's own processes.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [item["name"] for item in config["input"]]
        self.outputs = {
            item["name"]: pb_utils.triton_string_to_numpy(item["data_type"]) for item in config["output"]
        }

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feed = {
                    name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs
                }
                names = list(self.outputs)
                values = self.session.run(names, feed)
                # Triton drops the outputs a request did not ask for.
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=self.outputs[name]))
                    for name, value in zip(names, values, strict=False)
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # noqa: BLE001 - reported to the client as the request's error
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {exc}"))
                )
        return responses
