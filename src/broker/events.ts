/** What a context reports to its watchers, and the views handed outside the broker. */
import type { KernelObjectId } from '../kernel/types.js';
import type { DeviceId, Handle } from './ids.js';
import type { ObjectKind, ObjectState } from './objects.js';

export type TeardownReason = 'unbind' | 'close' | 'client_gone' | 'forced' | 'device_request';
export const TEARDOWN_REASONS: readonly TeardownReason[] = ['unbind', 'close', 'client_gone', 'forced', 'device_request'];

export type TeardownAction =
  | 'move_off_nested'
  | 'destroy'
  | 'detach'
  | 'close_device'
  | 'found_tombstoned'
  | 'auto_freed'
  | 'close_iommufd';

export interface TeardownStep {
  action: TeardownAction;
  handle: Handle;
  kind: ObjectKind | undefined;
  kernelId: KernelObjectId | undefined;
}

export interface TeardownReport {
  reason: TeardownReason;
  steps: TeardownStep[];
  vdevicesDestroyed: number;
  vdevicesFoundTombstoned: number;
  /** Steps that still failed after retries; the kernel cleaned up on close. */
  failures: { handle: Handle; action: TeardownAction; errno: string }[];
}

/** A read-only snapshot of one object, safe to hand outside the broker. */
export interface ObjectView {
  handle: Handle;
  kind: ObjectKind;
  state: ObjectState;
  kernelId: KernelObjectId;
  holds: Handle[];
  heldBy: Handle[];
  deviceId?: DeviceId;
  attachedHwpt?: Handle;
  automatic?: boolean;
  nestParent?: boolean;
  virtId?: bigint;
}

export type ContextEvent =
  | { type: 'created'; object: ObjectView }
  | { type: 'destroyed'; handle: Handle; kind: ObjectKind }
  | { type: 'teardown'; report: TeardownReport }
  | { type: 'device_removed'; device: Handle; deviceId: DeviceId }
  | { type: 'closed'; reason: TeardownReason };

export interface SequencedEvent {
  sequence: number;
  time: Date;
  event: ContextEvent;
}
