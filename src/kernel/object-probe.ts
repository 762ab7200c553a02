/**
 * Non-destructive checks of an object ID, for the restart reconcile
 * (src/broker/restore.ts): is the object the journal remembers still there,
 * and is it still of the kind the journal says?
 *
 * IOMMU_DESTROY is the only ioctl that takes any kind of ID, and it destroys,
 * so each kind gets a lookup ioctl whose arguments make it read-only. Every
 * iommufd lookup is typed and answers ENOENT for an unknown, tombstoned or
 * wrong-type ID (kernel-uapi.md §2), so a typed lookup that answers anything
 * else proves the object is alive and of that type:
 *
 * - IOAS: IOMMU_IOAS_IOVA_RANGES with room for no range (§3.6): 0 or EMSGSIZE
 *   when alive. It only reads the allowed ranges.
 * - DEVICE: IOMMU_GET_HW_INFO with data_len 0 (§3.8): 0 when alive. Read-only.
 *   The device fd itself is checked with VFIO_DEVICE_GET_INFO, which answers
 *   EINVAL on an unbound file (§3.15).
 * - HWPT_PAGING: IOMMU_HWPT_GET_DIRTY_BITMAP with the NO_CLEAR flag and
 *   page_size 0: the typed HWPT_PAGING lookup comes first, then the range
 *   check refuses page_size 0 with EINVAL before any bitmap is read or any
 *   dirty bit cleared (iommufd_hwpt_get_dirty_bitmap → iommufd_check_iova_range
 *   in 7.2). EINVAL means alive.
 * - HWPT_NESTED and VIOMMU: no typed read-only lookup exists. IOMMU_HWPT_INVALIDATE
 *   with entry_num 0 (§3.14 "entry_num = 0 checks only the type") looks the
 *   ID up as any type, answers EINVAL for every type but these two, and hands
 *   these two to the driver with an empty array, which invalidates nothing.
 *   A driver may refuse a data_type that is not its own (EINVAL), so the
 *   known types are tried in turn; any other answer than EINVAL/ENOENT means
 *   alive. The two kinds answer alike: which of them it is comes from the
 *   journal.
 * - VDEVICE: nothing looks a vDEVICE up but DESTROY. HWPT_INVALIDATE answers
 *   ENOENT once it is gone (or tombstoned, §4.3) and EINVAL while some object
 *   other than a nested HWPT or vIOMMU holds the ID; the typed probes above
 *   then rule out the other kinds the broker creates. What is left is a
 *   vDEVICE, the only remaining kind the broker allocates.
 *
 * The sim answers these same ioctls (src/kernel/sim/adopt.ts), so the
 * classification below runs unchanged against both backends.
 */
import { isKernelError, kernelId, type IommufdFile, type KernelBackend, type KernelObjectId, type KernelOp, type LookupIoctl } from './types.js';

export type ProbedKind = 'DEVICE' | 'IOAS' | 'HWPT_PAGING' | 'HWPT_NESTED' | 'VIOMMU' | 'VDEVICE';

/** What an ID turned out to be: the expected object, nothing, or something else. */
export type ProbeOutcome = { state: 'present' } | { state: 'absent' } | { state: 'other'; found: string };

/**
 * HWPT_INVALIDATE data types tried in turn: the selftest mock's (the same
 * value for nested HWPTs and vIOMMUs), Intel VT-d stage-1, ARM SMMUv3's
 * vIOMMU invalidation (iommufd.h).
 */
export const INVALIDATE_DATA_TYPES = [0xdeadbeef, 0, 1] as const;

/** The KernelOp each lookup is counted and reported as, on both backends. */
export const LOOKUP_OP: Readonly<Record<LookupIoctl, KernelOp>> = {
  IOMMU_IOAS_IOVA_RANGES: 'ioas_iova_ranges',
  IOMMU_GET_HW_INFO: 'get_hw_info',
  IOMMU_HWPT_GET_DIRTY_BITMAP: 'hwpt_get_dirty_bitmap',
  IOMMU_HWPT_INVALIDATE: 'hwpt_invalidate',
};

type Backend = Pick<KernelBackend, 'lookupProbe'>;

/** 'ok' or the errno; anything that is not a kernel answer is rethrown. */
async function ask(kernel: Backend, iommufd: IommufdFile, ioctl: LookupIoctl, id: KernelObjectId, dataType?: number): Promise<string> {
  if (!kernel.lookupProbe) throw new Error('this kernel backend cannot probe object IDs');
  try {
    await kernel.lookupProbe(iommufd, { ioctl, id, ...(dataType !== undefined ? { dataType } : {}) });
    return 'ok';
  } catch (err) {
    if (isKernelError(err)) return err.errno;
    throw err;
  }
}

/** Answers that prove a typed lookup found its object (see the module comment). */
const ALIVE: Record<'IOAS' | 'DEVICE' | 'HWPT_PAGING', { ioctl: LookupIoctl; answers: readonly string[] }> = {
  IOAS: { ioctl: 'IOMMU_IOAS_IOVA_RANGES', answers: ['ok', 'EMSGSIZE'] },
  DEVICE: { ioctl: 'IOMMU_GET_HW_INFO', answers: ['ok'] },
  HWPT_PAGING: { ioctl: 'IOMMU_HWPT_GET_DIRTY_BITMAP', answers: ['EINVAL'] },
};

class UnexpectedAnswer extends Error {
  override readonly name = 'UnexpectedAnswer';
}

async function typed(kernel: Backend, iommufd: IommufdFile, id: KernelObjectId, kind: keyof typeof ALIVE): Promise<boolean> {
  const probe = ALIVE[kind];
  const answer = await ask(kernel, iommufd, probe.ioctl, id);
  if (probe.answers.includes(answer)) return true;
  if (answer === 'ENOENT') return false;
  throw new UnexpectedAnswer(`${probe.ioctl} on ${id} answered ${answer}`);
}

/** HWPT_INVALIDATE with no entries: 'nested_or_viommu', 'other' (alive, another type) or 'absent'. */
async function invalidateProbe(kernel: Backend, iommufd: IommufdFile, id: KernelObjectId): Promise<'nested_or_viommu' | 'other' | 'absent'> {
  for (const dataType of INVALIDATE_DATA_TYPES) {
    const answer = await ask(kernel, iommufd, 'IOMMU_HWPT_INVALIDATE', id, dataType);
    if (answer === 'ENOENT') return 'absent';
    if (answer !== 'EINVAL') return 'nested_or_viommu';
  }
  return 'other';
}

/** What lives at `id`, by elimination; 'VDEVICE_OR_OTHER' is any type no probe names. */
export async function classify(
  kernel: Backend,
  iommufd: IommufdFile,
  id: KernelObjectId,
): Promise<'IOAS' | 'DEVICE' | 'HWPT_PAGING' | 'HWPT_NESTED_OR_VIOMMU' | 'VDEVICE_OR_OTHER' | 'ABSENT'> {
  for (const kind of ['IOAS', 'DEVICE', 'HWPT_PAGING'] as const) if (await typed(kernel, iommufd, id, kind)) return kind;
  const rest = await invalidateProbe(kernel, iommufd, id);
  return rest === 'absent' ? 'ABSENT' : rest === 'other' ? 'VDEVICE_OR_OTHER' : 'HWPT_NESTED_OR_VIOMMU';
}

async function otherOrAbsent(kernel: Backend, iommufd: IommufdFile, id: KernelObjectId): Promise<ProbeOutcome> {
  const found = await classify(kernel, iommufd, id);
  return found === 'ABSENT' ? { state: 'absent' } : { state: 'other', found };
}

/**
 * Whether `id` still names a `kind` object in this iommufd. Rejects only when
 * the kernel answers something the uAPI does not document for these calls.
 */
export async function probeObject(kernel: Backend, iommufd: IommufdFile, id: KernelObjectId, kind: ProbedKind): Promise<ProbeOutcome> {
  try {
    switch (kind) {
      case 'IOAS':
      case 'DEVICE':
      case 'HWPT_PAGING':
        return (await typed(kernel, iommufd, id, kind)) ? { state: 'present' } : await otherOrAbsent(kernel, iommufd, id);
      case 'HWPT_NESTED':
      case 'VIOMMU': {
        const rest = await invalidateProbe(kernel, iommufd, id);
        if (rest === 'nested_or_viommu') return { state: 'present' };
        return rest === 'absent' ? { state: 'absent' } : await otherOrAbsent(kernel, iommufd, id);
      }
      case 'VDEVICE': {
        const found = await classify(kernel, iommufd, id);
        if (found === 'VDEVICE_OR_OTHER') return { state: 'present' };
        return found === 'ABSENT' ? { state: 'absent' } : { state: 'other', found };
      }
    }
  } catch (err) {
    if (err instanceof UnexpectedAnswer) throw new Error(`probing ${kind} ${id}: ${err.message}`);
    throw err;
  }
}

/** The `n` lowest IDs not in `used`: where the kernel put what an interrupted operation created (§0: lowest free first). */
export function lowestFreeIds(used: ReadonlySet<number>, n: number): KernelObjectId[] {
  const out: KernelObjectId[] = [];
  for (let id = 1; out.length < n && id <= 0x7fff_ffff; id++) if (!used.has(id)) out.push(kernelId(id));
  return out;
}
