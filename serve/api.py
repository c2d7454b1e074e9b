"""The generated gRPC modules of `e4t.v1`, generated on first import if needed.

Import messages and stubs from here (`from serve.api import pb2, pb2_grpc`),
never from `serve.gen` directly, so a fresh checkout or an edited .proto just works.
"""

from serve.protogen import ensure_generated

ensure_generated()

from serve.gen import e4t_v1_pb2 as pb2  # noqa: E402 -- generated just above
from serve.gen import e4t_v1_pb2_grpc as pb2_grpc  # noqa: E402

SERVICE_NAME: str = pb2.DESCRIPTOR.services_by_name["E4T"].full_name

__all__ = ["SERVICE_NAME", "pb2", "pb2_grpc"]
