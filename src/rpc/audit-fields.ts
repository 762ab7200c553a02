/**
 * What an audit record names: the scalar identifiers of a request (handles,
 * device IDs, tenants, virt_ids) and the handles a response created. Read
 * from the message descriptors, so a new RPC is audited without new code.
 * Byte payloads (driver data) are never copied into the log, nor fields
 * marked `debug_redact` (fd-socket tokens: whoever reads the audit log must
 * not be able to redeem them).
 */
import { ScalarType, type DescMessage, type Message } from '@bufbuild/protobuf';
import { MethodOptions_IdempotencyLevel } from '@bufbuild/protobuf/wkt';
import type { DescMethod } from '@bufbuild/protobuf';
import { ObjectInfoSchema } from '../gen/vfio_broker/v1/objects_pb.js';

export function isMutating(method: DescMethod): boolean {
  return method.idempotency !== MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS;
}

export function auditFields(schema: DescMessage, message: Message, prefix = ''): Record<string, string> {
  const out: Record<string, string> = {};
  const values = message as unknown as Record<string, unknown>;
  for (const field of schema.fields) {
    if (field.proto.options?.debugRedact) continue;
    const value = values[field.localName];
    const key = `${prefix}${field.name}`;
    switch (field.fieldKind) {
      case 'scalar':
        if (field.scalar === ScalarType.BYTES || value === '' || value === 0 || value === 0n || value === false) break;
        out[key] = String(value);
        break;
      case 'enum':
        if (value !== 0) out[key] = field.enum.value[value as number]?.name ?? String(value);
        break;
      case 'message':
        if (field.message.typeName === ObjectInfoSchema.typeName && value) {
          out[key] = String((value as { handle: bigint }).handle);
        }
        break;
      case 'list':
      case 'map':
        break;
    }
  }
  return out;
}
