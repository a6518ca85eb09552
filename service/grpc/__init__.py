"""The V2 inference protocol over gRPC: ``GRPCInferenceService`` and ``grpc.health.v1``."""
