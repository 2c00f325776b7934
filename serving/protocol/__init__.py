"""The wire protocols: KServe V1 and the Open Inference Protocol (V2) over REST and gRPC, parsed into arrays."""
