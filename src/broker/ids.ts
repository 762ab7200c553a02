/**
 * Branded identifiers. A handle is unique within its context and never
 * reused; a kernel ID (src/kernel) is reused as soon as it is freed. Keeping
 * them distinct types makes it impossible to hand one where the other belongs.
 */
import { randomBytes } from 'node:crypto';

export type Handle = number & { readonly __handle: unique symbol };
export type ContextId = string & { readonly __contextId: unique symbol };
export type TenantId = string & { readonly __tenantId: unique symbol };
/** A device's inventory ID: its PCI address. */
export type DeviceId = string & { readonly __deviceId: unique symbol };

export const NO_HANDLE = 0 as Handle;

export function newContextId(): ContextId {
  // Unguessable, so a context ID is never a capability someone can enumerate.
  return `ctx-${randomBytes(12).toString('hex')}` as ContextId;
}

export function asTenant(name: string): TenantId {
  return name as TenantId;
}

export function asDeviceId(id: string): DeviceId {
  return id as DeviceId;
}

export function asContextId(id: string): ContextId {
  return id as ContextId;
}

/** Handles arrive as uint64 on the wire; anything past 2^53 cannot name an object. */
export function asHandle(value: bigint | number): Handle {
  const n = typeof value === 'bigint' ? (value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : -1) : value;
  return n as Handle;
}
