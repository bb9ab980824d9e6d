"""The gRPC server: each RPC's body written once (`service`, `control`), request validation
(`validate`), the aio and threaded adapters (`handlers`), and the server that serves them
(`grpc_server`)."""
