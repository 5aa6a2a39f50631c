"""A small Open Inference Protocol gRPC client for the kubevae server (tests, benchmarks).

    with GrpcClient("127.0.0.1:8081") as client:
        out = client.infer("kubevae", "encode", images=images)   # {"mu": ..., "logvar": ...}

Images go as raw_input_contents (row-major bytes), as the protocol allows; the op is the
request parameter "op" (a string InferParameter), as on REST.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

DTYPES = {"UINT8": np.uint8, "FP32": np.float32}
CONTENTS = {"UINT8": "uint_contents", "FP32": "fp32_contents"}


def parameter(value: Any) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=str(value))  # floats travel as strings


def infer_request(model_name: str, op: str, images: np.ndarray | None = None,
                  latents: np.ndarray | None = None, request_id: str = "", **params: Any
                  ) -> pb.ModelInferRequest:
    if images is not None:
        name, array = "images", np.ascontiguousarray(images)
    else:
        name, array = "latents", np.ascontiguousarray(latents, dtype=np.float32)
    datatype = "UINT8" if array.dtype == np.uint8 else "FP32"
    array = array.astype(DTYPES[datatype], copy=False)
    request = pb.ModelInferRequest(model_name=model_name, id=request_id)
    request.parameters["op"].CopyFrom(parameter(op))
    for key, value in params.items():
        if value is not None:
            request.parameters[key].CopyFrom(parameter(value))
    if images is not None or latents is not None:
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    return request


def decode_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    outputs = {}
    for i, output in enumerate(response.outputs):
        dtype = DTYPES[output.datatype]
        if response.raw_output_contents:
            array = np.frombuffer(response.raw_output_contents[i], dtype=dtype)
        else:
            array = np.asarray(getattr(output.contents, CONTENTS[output.datatype]), dtype=dtype)
        outputs[output.name] = array.reshape(list(output.shape))
    return outputs


class GrpcClient:
    def __init__(self, target: str, max_message_bytes: int = 64 * 2**20):
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = GRPCInferenceServiceStub(self.channel)

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.channel.close()

    def ready(self, model_name: str, timeout: float = 5.0) -> bool:
        return self.stub.ModelReady(pb.ModelReadyRequest(name=model_name), timeout=timeout).ready

    def infer_raw(self, request: pb.ModelInferRequest, timeout: float = 60.0,
                  metadata: tuple = ()) -> pb.ModelInferResponse:
        return self.stub.ModelInfer(request, timeout=timeout, metadata=metadata)

    def infer(self, model_name: str, op: str, **kwargs: Any) -> dict[str, np.ndarray]:
        return decode_response(self.infer_raw(infer_request(model_name, op, **kwargs)))
