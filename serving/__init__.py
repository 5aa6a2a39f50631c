"""The KServe model server for kubevae's beta-VAEs.

- serving.model: `VAEModel`, the kserve.Model subclass (load, metadata, and KServe's three
  timed stages: preprocess parses, predict runs the model, postprocess answers);
- serving.ops: the operations on tensors (encode, reconstruct, generate, score, traverse);
- serving.codec: V1 / V2 requests to validated tensors, and results back to responses;
- serving.batcher: dynamic batching of concurrent requests on one model thread;
- serving.http: the HTTP guards (body limit, request id, 400 for bad input), the binary
  tensor extension's decoder, and JSON logs;
- serving.server: `serve(ServeConfig)`, which starts kserve.ModelServer (with a data plane
  that keeps binary tensors as bytes);
- serving.grpc_client: a small Open Inference Protocol gRPC client;
- serving.command: `kubevae serve`.

This package may import kserve; the core library (kubevae/) never does.
"""
