/**
 * Server reflection, fed the same descriptors protoc-gen-es generated, so
 * `buf curl --list-services` and calls work without .proto files at hand.
 */
import { toBinary, type DescFile } from '@bufbuild/protobuf';
import {
  FileDescriptorProtoSchema,
  file_google_protobuf_any,
  file_google_protobuf_descriptor,
  file_google_protobuf_duration,
  file_google_protobuf_field_mask,
  file_google_protobuf_timestamp,
} from '@bufbuild/protobuf/wkt';
import { file_buf_validate_validate } from '@bufbuild/protovalidate/gen/buf/validate/validate_pb.js';
import { ReflectionService } from '@grpc/reflection';
import * as protoLoader from '@grpc/proto-loader';
import type * as grpc from '@grpc/grpc-js';
import { file_google_rpc_error_details } from '../gen/google/rpc/error_details_pb.js';
import { file_google_rpc_status } from '../gen/google/rpc/status_pb.js';
import { file_grpc_health_v1_health } from '../gen/grpc/health/v1/health_pb.js';
import { file_vfio_broker_v1_admin } from '../gen/vfio_broker/v1/admin_pb.js';
import { file_vfio_broker_v1_broker } from '../gen/vfio_broker/v1/broker_pb.js';
import { file_vfio_broker_v1_objects } from '../gen/vfio_broker/v1/objects_pb.js';
import { file_vfio_broker_v1_topology } from '../gen/vfio_broker/v1/topology_pb.js';

/** Dependencies before dependents. */
const FILES: readonly DescFile[] = [
  file_google_protobuf_any,
  file_google_protobuf_timestamp,
  file_google_protobuf_descriptor,
  file_google_protobuf_duration,
  file_google_protobuf_field_mask,
  file_buf_validate_validate,
  file_google_rpc_status,
  file_google_rpc_error_details,
  file_grpc_health_v1_health,
  file_vfio_broker_v1_objects,
  file_vfio_broker_v1_topology,
  file_vfio_broker_v1_broker,
  file_vfio_broker_v1_admin,
];

/**
 * @grpc/reflection reads only `fileDescriptorProtos` from a package
 * definition. proto-loader's own loader merges all files of one package into
 * one and drops their imports (so clients cannot resolve google.protobuf
 * types), so the definition is built here from the original files instead.
 */
export function reflectionPackage(): protoLoader.PackageDefinition {
  const fileDescriptorProtos = FILES.map((f) => Buffer.from(toBinary(FileDescriptorProtoSchema, f.proto)));
  const pkg: protoLoader.PackageDefinition = {};
  for (const file of FILES) {
    for (const service of file.services) {
      pkg[service.typeName] = { format: 'Protocol Buffer 3 DescriptorProto', type: {}, fileDescriptorProtos } as unknown as protoLoader.MessageTypeDefinition<object, object>;
    }
  }
  return pkg;
}

export function addReflection(server: grpc.Server): void {
  new ReflectionService(reflectionPackage()).addToServer(server);
}
