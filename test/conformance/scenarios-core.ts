/**
 * Scenarios on IDs, lookups and IOMMU_DESTROY (kernel-uapi.md §0, §2, §3.1)
 * and on mock devices and HWPT allocation (§3.9, §6.2, §6.3), all on the
 * selftest mock IOMMU, which is the same code on the sim and in the lane.
 */
import {
  HWPT_ALLOC_DIRTY_TRACKING,
  HWPT_ALLOC_NEST_PARENT,
  HWPT_ALLOC_PASID,
  HWPT_DATA_TYPE,
  HWPT_FAULT_ID_VALID,
  VIOMMU_TYPE,
} from '../../src/kernel/types.js';
import { err, mock, mockHwInfo, ok } from './harness.js';
import { id, nested, paging, selftestData, type Scenario } from './fixtures.js';

/** MOCK_FLAGS_DEVICE_NO_DIRTY and MOCK_FLAGS_DEVICE_PASID (iommufd_test.h). */
const NO_DIRTY = 1 << 0;
const PASID = 1 << 2;
/** IOMMU_HW_CAP_DIRTY_TRACKING | IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED (§3.8, §6.3). */
const CAPS = 0x1 | 0x8;

export const CORE_SCENARIOS: readonly Scenario[] = [
  {
    name: 'iommufd.simple_close',
    rules: '§7: open /dev/iommu gives a context; close(2) never fails',
    async run(s) {
      const fd = await s.openIommufd();
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'iommufd.cmd_fail',
    rules: '§3.1 DESTROY of 0 and of never-allocated ids is ENOENT (the EFAULT/ENOTTY parts are encoding tests of the linux backend)',
    async run(s) {
      const fd = await s.openIommufd();
      await s.destroy(fd, id(0), err('ENOENT'), { note: 'id 0 is never valid' });
      await s.destroy(fd, id(1), err('ENOENT'), { note: 'empty context' });
      await s.destroy(fd, id(0x7fff_ffff), err('ENOENT'), { note: 'top of the ID range' });
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'ids.lowest_free_reuse',
    rules: '§0 lowest free ID in 1..2^31-1, a freed ID is reused at once, possibly for another object type',
    async run(s) {
      const fd = await s.openIommufd();
      await s.ioasAlloc(fd, ok(1));
      await s.ioasAlloc(fd, ok(2));
      await s.ioasAlloc(fd, ok(3));
      await s.destroy(fd, id(2), ok());
      await s.ioasAlloc(fd, ok(2), { note: 'the freed ID comes back at once' });
      await s.destroy(fd, id(3), ok());
      await s.destroy(fd, id(1), ok());
      await s.ioasAlloc(fd, ok(1), { note: 'lowest free first' });
      await s.ioasAlloc(fd, ok(3));
      await s.ioasAlloc(fd, ok(4));
      await s.destroy(fd, id(2), ok());
      // The reused ID 2 now names a SELFTEST object; a cached "IOAS 2" would be wrong.
      await s.mockDomain(fd, id(1), mock(2, 6, 5), undefined, { note: 'ID 2 reused by another type' });
      await s.destroy(fd, id(2), ok(), { note: 'destroys the mock device, not an IOAS' });
      await s.ioasAlloc(fd, ok(2));
      await s.ioasAlloc(fd, ok(5));
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'ids.destroy_rules',
    rules: '§3.1 ENOENT for unknown/0/destroyed ids, EBUSY for a DEVICE id and for held objects, no type check',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const m = await s.mockDomain(fd, ioas, mock(2, 4, 3));
      await s.destroy(fd, id(99), err('ENOENT'));
      await s.destroy(fd, m.idevId, err('EBUSY'), { note: 'DEVICE ids are always EBUSY' });
      await s.destroy(fd, m.hwptId, err('EBUSY'), { note: 'automatic HWPT held by the attachment' });
      await s.destroy(fd, ioas, err('EBUSY'), { note: 'IOAS held by the automatic HWPT' });
      const manual = await s.hwptAlloc(fd, paging(m.idevId, ioas), ok(5));
      await s.destroy(fd, manual, ok(), { note: 'any unreferenced object is destroyed' });
      await s.destroy(fd, manual, err('ENOENT'), { note: 'already destroyed' });
      await s.destroy(fd, m.stdevId, ok(), { note: 'unbinds the mock device' });
      await s.destroy(fd, m.stdevId, err('ENOENT'));
      await s.destroy(fd, m.idevId, err('ENOENT'), { note: 'the DEVICE id was freed by the unbind' });
      await s.destroy(fd, m.hwptId, err('ENOENT'), { note: 'the automatic HWPT died with its last attachment' });
      await s.destroy(fd, ioas, ok());
      await s.ioasAlloc(fd, ok(1), { note: 'nothing left, no tombstone' });
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'ids.wrong_type_lookups',
    rules: '§2 lookup rule: unknown, 0 and wrong-type ids are ENOENT; HWPT_ALLOC pt_id failures are EINVAL; attach targets of the wrong type are EINVAL (§3.16); failures consume no ID',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const m = await s.mockDomain(fd, ioas, mock(2, 4, 3));
      const parent = await s.hwptAlloc(fd, paging(m.idevId, ioas, HWPT_ALLOC_NEST_PARENT), ok(5));
      const viommu = await s.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: parent }, ok(6));
      const vdev = await s.vdeviceAlloc(fd, { viommuId: viommu, devId: m.idevId, virtId: 0x99n }, ok(7));
      const nest = await s.hwptAlloc(fd, nested(m.idevId, viommu), ok(8));
      // dev_id lookups (IOMMUFD_OBJ_DEVICE).
      await s.hwptAlloc(fd, paging(ioas, ioas), err('ENOENT'), { note: 'dev_id is an IOAS' });
      await s.hwptAlloc(fd, paging(m.stdevId, ioas), err('ENOENT'), { note: 'dev_id is the SELFTEST object' });
      await s.hwptAlloc(fd, paging(id(0), ioas), err('ENOENT'), { note: 'dev_id 0' });
      await s.getHwInfo(fd, ioas, err('ENOENT'));
      await s.getHwInfo(fd, m.stdevId, err('ENOENT'));
      await s.getHwInfo(fd, vdev, err('ENOENT'));
      // pt_id of HWPT_ALLOC: any lookup failure or wrong type is EINVAL.
      await s.hwptAlloc(fd, paging(m.idevId, m.idevId), err('EINVAL'), { note: 'pt_id is a DEVICE' });
      await s.hwptAlloc(fd, paging(m.idevId, vdev), err('EINVAL'), { note: 'pt_id is a VDEVICE' });
      await s.hwptAlloc(fd, paging(m.idevId, m.stdevId), err('EINVAL'), { note: 'pt_id is the SELFTEST object' });
      await s.hwptAlloc(fd, paging(m.idevId, id(0)), err('EINVAL'), { note: 'pt_id 0' });
      await s.hwptAlloc(fd, paging(m.idevId, id(99)), err('EINVAL'), { note: 'pt_id unknown' });
      await s.hwptAlloc(fd, nested(m.idevId, nest), err('EINVAL'), { note: 'a nested HWPT on a nested HWPT' });
      // vIOMMU and vDEVICE lookups.
      await s.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: ioas }, err('ENOENT'), { note: 'hwpt_id is an IOAS' });
      await s.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: nest }, err('ENOENT'), { note: 'hwpt_id is a HWPT_NESTED' });
      await s.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: viommu }, err('ENOENT'), { note: 'hwpt_id is a vIOMMU' });
      await s.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: ioas, hwptId: parent }, err('ENOENT'), { note: 'dev_id is an IOAS' });
      await s.vdeviceAlloc(fd, { viommuId: parent, devId: m.idevId, virtId: 1n }, err('ENOENT'), { note: 'viommu_id is a HWPT' });
      await s.vdeviceAlloc(fd, { viommuId: viommu, devId: m.stdevId, virtId: 1n }, err('ENOENT'), { note: 'dev_id is the SELFTEST object' });
      await s.vdeviceAlloc(fd, { viommuId: id(0), devId: m.idevId, virtId: 1n }, err('ENOENT'), { note: 'viommu_id 0' });
      // MOCK_DOMAIN_REPLACE needs a SELFTEST id, then an IOAS or HWPT.
      await s.mockReplace(fd, m.idevId, ioas, err('ENOENT'), { note: 'id is the DEVICE, not the SELFTEST object' });
      await s.mockReplace(fd, ioas, ioas, err('ENOENT'), { note: 'id is an IOAS' });
      await s.mockReplace(fd, m.stdevId, viommu, err('EINVAL'), { note: 'pt is a vIOMMU' });
      await s.mockReplace(fd, m.stdevId, m.idevId, err('EINVAL'), { note: 'pt is a DEVICE' });
      await s.mockReplace(fd, m.stdevId, vdev, err('EINVAL'), { note: 'pt is a VDEVICE' });
      await s.mockReplace(fd, m.stdevId, id(99), err('ENOENT'), { note: 'pt unknown' });
      // MOCK_DOMAIN attaches at once, with the same lookup as ATTACH.
      await s.mockDomain(fd, viommu, err('EINVAL'), undefined, { note: 'pt is a vIOMMU' });
      await s.mockDomain(fd, vdev, err('EINVAL'), undefined, { note: 'pt is a VDEVICE' });
      await s.mockDomain(fd, id(99), err('ENOENT'), undefined, { note: 'pt unknown' });
      await s.mockDomain(fd, id(0), err('ENOENT'), undefined, { note: 'pt 0' });
      await s.ioasAlloc(fd, ok(9), { note: 'no failed call leaked an ID' });
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'ids.per_iommufd',
    rules: '§0 IDs are allocated per iommufd file: the same number names different objects in two files, and an ID of one file is ENOENT in the other',
    async run(s) {
      const fd1 = await s.openIommufd();
      const fd2 = await s.openIommufd();
      await s.ioasAlloc(fd1, ok(1));
      const ioas2 = await s.ioasAlloc(fd2, ok(1), { note: 'the other file starts at 1 too' });
      const m = await s.mockDomain(fd2, ioas2, mock(2, 4, 3));
      await s.ioasAlloc(fd1, ok(2));
      await s.destroy(fd1, m.idevId, err('ENOENT'), { note: 'the DEVICE lives in the other file' });
      await s.mockReplace(fd1, m.stdevId, id(1), err('ENOENT'), { note: 'id 2 is an IOAS in this file' });
      await s.destroy(fd1, m.stdevId, ok(), { note: 'destroys this file’s IOAS 2, not the mock device' });
      await s.mockReplace(fd2, m.stdevId, ioas2, ok(4), { note: 'the mock device is untouched' });
      await s.closeIommufd(fd2);
      await s.ioasAlloc(fd1, ok(2));
      await s.closeIommufd(fd1);
    },
  },
  {
    name: 'hwpt_alloc.check_order_and_data',
    rules: '§3.9 order of checks (data fields, dev_id, pt_id, flags); FAULT_ID_VALID with no FAULT is ENOENT; PASID/DIRTY flags and selftest paging data (§6.3); driver data longer than the struct is EINVAL (§2); §3.10 type 0 before any lookup',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const m = await s.mockDomain(fd, ioas, mock(2, 4, 3));
      await s.hwptAlloc(fd, paging(id(0), id(0), 0, { data: selftestData() }), err('EINVAL'), { note: 'data fields before any lookup' });
      await s.hwptAlloc(fd, paging(id(0), id(0)), err('ENOENT'), { note: 'dev_id before pt_id' });
      await s.hwptAlloc(fd, paging(m.idevId, id(99), 1 << 4), err('EINVAL'), { note: 'pt_id before flags' });
      await s.hwptAlloc(fd, paging(m.idevId, ioas, HWPT_FAULT_ID_VALID), err('ENOENT'), { note: 'fault_id 0 names no FAULT' });
      await s.hwptAlloc(fd, paging(m.idevId, ioas, HWPT_ALLOC_PASID), ok(5));
      await s.hwptAlloc(fd, paging(m.idevId, ioas, HWPT_ALLOC_DIRTY_TRACKING | HWPT_ALLOC_NEST_PARENT), ok(6));
      const withData = await s.hwptAlloc(fd, paging(m.idevId, ioas, 0, { dataType: HWPT_DATA_TYPE.SELFTEST, data: selftestData() }), ok(7));
      await s.hwptAlloc(fd, paging(m.idevId, ioas, 0, { dataType: HWPT_DATA_TYPE.SELFTEST, data: selftestData(4) }), ok(8), { note: 'minimum length' });
      await s.hwptAlloc(fd, paging(m.idevId, ioas, 0, { dataType: HWPT_DATA_TYPE.SELFTEST, data: selftestData(8, 1) }), ok(9), { note: 'MOCK_IOMMUPT_HUGE' });
      await s.hwptAlloc(fd, paging(m.idevId, ioas, 0, { dataType: HWPT_DATA_TYPE.SELFTEST, data: selftestData(8, 2) }), err('EOPNOTSUPP'), { note: 'unknown pagetable_type' });
      await s.hwptAlloc(fd, paging(m.idevId, ioas, 0, { dataType: HWPT_DATA_TYPE.SELFTEST, data: selftestData(9) }), err('EINVAL'), { note: 'longer than the kernel struct' });
      await s.hwptAlloc(fd, paging(m.idevId, ioas, 0, { dataType: HWPT_DATA_TYPE.SELFTEST + 1, data: selftestData() }), err('EOPNOTSUPP'));
      await s.mockReplace(fd, m.stdevId, withData, ok(7));
      await s.viommuAlloc(fd, { type: 0xdead, devId: id(0), hwptId: id(0) }, err('ENOENT'), { note: 'dev_id before the driver type check' });
      await s.viommuAlloc(fd, { type: 0, devId: id(0), hwptId: id(0) }, err('EOPNOTSUPP'), { note: 'type 0 before any lookup' });
      await s.getHwInfo(fd, id(0), err('ENOENT'));
      await s.ioasAlloc(fd, ok(4), { note: 'the automatic HWPT 4 went with the replace' });
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'iommufd_ioas.ioas_destroy',
    rules: '§4.2 IOAS held by a device HWPT is EBUSY; a bare IOAS is destroyable; §6.2/§6.4 ID order of MOCK_DOMAIN',
    async run(s) {
      const fd = await s.openIommufd();
      const bare = await s.ioasAlloc(fd, ok(1));
      await s.destroy(fd, bare, ok(), { note: 'no_domain variant' });
      const ioas = await s.ioasAlloc(fd, ok(1));
      const m = await s.mockDomain(fd, ioas, mock(2, 4, 3), undefined, { note: 'stdev, then idev, then the automatic HWPT' });
      await s.destroy(fd, ioas, err('EBUSY'), { note: 'mock_domain variant' });
      await s.destroyMock(fd, m.stdevId, ok());
      await s.destroy(fd, ioas, ok());
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'iommufd_ioas.hwpt_attach',
    rules: '§6.2 MOCK_DOMAIN on a HWPT attaches to it; §3.16 devices on one IOAS share the automatic HWPT; it dies with its last user',
    async run(s) {
      const fd = await s.openIommufd();
      await s.mockDomain(fd, id(0), err('ENOENT'), undefined, { note: 'no_domain variant: hwpt 0' });
      const ioas = await s.ioasAlloc(fd, ok(1));
      const a = await s.mockDomain(fd, ioas, mock(2, 4, 3));
      const b = await s.mockDomain(fd, a.hwptId, mock(5, 4, 6), undefined, { note: 'straight onto the HWPT' });
      const c = await s.mockDomain(fd, ioas, mock(7, 4, 8), undefined, { note: 'the automatic HWPT is reused' });
      await s.destroyMock(fd, a.stdevId, ok());
      await s.destroy(fd, a.hwptId, err('EBUSY'), { note: 'still used by two devices' });
      await s.destroyMock(fd, b.stdevId, ok());
      await s.destroyMock(fd, c.stdevId, ok());
      await s.destroy(fd, a.hwptId, err('ENOENT'), { note: 'freed with its last attachment' });
      await s.ioasAlloc(fd, ok(2));
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'iommufd_mock_domain.replace',
    rules: '§3.16 replace: onto another IOAS allocates the new automatic HWPT before freeing the old one; the old id is ENOENT; same target is a no-op',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const a = await s.mockDomain(fd, ioas, mock(2, 4, 3));
      const ioas2 = await s.ioasAlloc(fd, ok(5));
      await s.mockReplace(fd, a.stdevId, ioas2, ok(6), { note: 'new automatic HWPT, then the old one goes' });
      await s.mockReplace(fd, a.stdevId, a.hwptId, err('ENOENT'), { note: 'the prior HWPT was deallocated' });
      await s.mockReplace(fd, a.stdevId, ioas2, ok(6), { note: 'same IOAS: no-op' });
      await s.mockReplace(fd, a.stdevId, ioas, ok(4), { note: 'back: the lowest free ID' });
      // two_mock_domain variant: a second device keeps the first automatic HWPT alive.
      const b = await s.mockDomain(fd, ioas, mock(6, 4, 7));
      await s.mockReplace(fd, a.stdevId, ioas2, ok(8));
      await s.mockReplace(fd, a.stdevId, b.hwptId, ok(4), { note: 'onto the other device’s HWPT' });
      await s.mockReplace(fd, a.stdevId, b.hwptId, ok(4), { note: 'same HWPT: no-op' });
      await s.mockReplace(fd, a.stdevId, ioas, ok(4), { note: 'the IOAS’s automatic HWPT is the current one' });
      await s.destroy(fd, id(8), err('ENOENT'), { note: 'the automatic HWPT on IOAS 5 died' });
      await s.destroy(fd, ioas2, ok());
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'iommufd_mock_domain.alloc_hwpt',
    rules: '§3.9 unknown flags EOPNOTSUPP; §4.2 an attached HWPT is EBUSY (HWPT rotation); MOCK_DOMAIN onto a manual HWPT',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const m = await s.mockDomain(fd, ioas, mock(2, 4, 3));
      await s.hwptAlloc(fd, paging(m.idevId, ioas, ~HWPT_ALLOC_NEST_PARENT), err('EOPNOTSUPP'));
      const h0 = await s.hwptAlloc(fd, paging(m.idevId, ioas), ok(5));
      const h1 = await s.hwptAlloc(fd, paging(m.idevId, ioas, HWPT_ALLOC_NEST_PARENT), ok(6));
      await s.mockReplace(fd, m.stdevId, h0, ok(5));
      await s.destroy(fd, h0, err('EBUSY'), { note: 'attached' });
      await s.mockReplace(fd, m.stdevId, h1, ok(6));
      await s.destroy(fd, h1, err('EBUSY'), { note: 'attached' });
      await s.mockReplace(fd, m.stdevId, ioas, ok(4), { note: 'new automatic HWPT' });
      await s.destroy(fd, h1, ok());
      const m2 = await s.mockDomain(fd, h0, mock(6, 5, 7), undefined, { note: 'straight onto the manual HWPT' });
      await s.destroyMock(fd, m2.stdevId, ok());
      await s.destroy(fd, h0, ok(), { note: 'a manual HWPT outlives its last attachment' });
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'iommufd_ioas.alloc_hwpt_nested',
    rules: '§3.9 data/flag/parent checks and their errnos; §4.2 a nested HWPT holds its parent; attached HWPTs are EBUSY',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const m = await s.mockDomain(fd, ioas, mock(2, 4, 3));
      await s.hwptAlloc(fd, paging(ioas, m.idevId), err('ENOENT'), { note: 'dev_id is the IOAS' });
      await s.hwptAlloc(fd, paging(m.idevId, m.idevId), err('EINVAL'), { note: 'pt_id is the device' });
      await s.hwptAlloc(fd, paging(m.idevId, ioas, HWPT_ALLOC_NEST_PARENT | HWPT_FAULT_ID_VALID), err('EOPNOTSUPP'));
      await s.hwptAlloc(fd, paging(m.idevId, ioas, 1 << 4), err('EOPNOTSUPP'), { note: 'unknown flag bit' });
      await s.hwptAlloc(fd, paging(m.idevId, ioas, 0, { data: selftestData() }), err('EINVAL'), { note: 'data_type NONE with data' });
      await s.hwptAlloc(fd, paging(m.idevId, ioas, 0, { dataType: HWPT_DATA_TYPE.SELFTEST }), err('EINVAL'), { note: 'data_type without data' });
      const parent = await s.hwptAlloc(fd, paging(m.idevId, ioas, HWPT_ALLOC_NEST_PARENT), ok(5));
      const notParent = await s.hwptAlloc(fd, paging(m.idevId, ioas), ok(6));
      await s.hwptAlloc(fd, nested(m.idevId, parent, { dataType: HWPT_DATA_TYPE.NONE }), err('EINVAL'), { note: 'data_type NONE' });
      await s.hwptAlloc(fd, nested(m.idevId, parent, { dataType: HWPT_DATA_TYPE.SELFTEST + 1 }), err('EOPNOTSUPP'), { note: 'wrong data_type' });
      await s.hwptAlloc(fd, nested(m.idevId, parent, { data: selftestData(3) }), err('EINVAL'), { note: 'data_len below offsetofend(iotlb)' });
      await s.hwptAlloc(fd, nested(m.idevId, parent, { flags: HWPT_ALLOC_NEST_PARENT }), err('EOPNOTSUPP'), { note: 'NEST_PARENT on a nested HWPT' });
      await s.hwptAlloc(fd, nested(m.idevId, notParent), err('EINVAL'), { note: 'parent not NEST_PARENT' });
      await s.hwptAlloc(fd, nested(m.idevId, m.hwptId), err('EINVAL'), { note: 'parent is an automatic HWPT' });
      const n0 = await s.hwptAlloc(fd, nested(m.idevId, parent), ok(7));
      const n1 = await s.hwptAlloc(fd, nested(m.idevId, parent), ok(8));
      await s.hwptAlloc(fd, nested(m.idevId, parent, { flags: HWPT_FAULT_ID_VALID }), err('ENOENT'), { note: 'fault_id 0 names no FAULT' });
      await s.destroy(fd, parent, err('EBUSY'), { note: 'held by its nested HWPTs' });
      await s.mockReplace(fd, m.stdevId, n0, ok(7), { note: 'no vIOMMU: no vDEVICE needed' });
      await s.destroy(fd, n0, err('EBUSY'), { note: 'attached' });
      await s.mockReplace(fd, m.stdevId, n1, ok(8));
      await s.destroy(fd, n1, err('EBUSY'), { note: 'attached' });
      await s.destroy(fd, n0, ok());
      await s.mockReplace(fd, m.stdevId, parent, ok(5));
      await s.destroy(fd, n1, ok());
      await s.mockReplace(fd, m.stdevId, ioas, ok(4));
      await s.destroy(fd, parent, ok());
      await s.destroy(fd, notParent, ok());
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'mock_domain.dev_flags',
    rules: '§6.2 MOCK_DOMAIN_FLAGS bits (others EINVAL); §6.3 GET_HW_INFO of the mock; DIRTY_TRACKING needs the capability (EOPNOTSUPP) and a NO_DIRTY device cannot attach to a dirty domain (EINVAL)',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const a = await s.mockDomain(fd, ioas, mock(2, 4, 3));
      await s.mockDomain(fd, ioas, err('EINVAL'), 1 << 1, { note: 'undefined dev_flags bit' });
      const b = await s.mockDomain(fd, ioas, mock(5, 4, 6), NO_DIRTY);
      const c = await s.mockDomain(fd, ioas, mock(7, 4, 8), PASID);
      await s.getHwInfo(fd, a.idevId, mockHwInfo(CAPS));
      await s.getHwInfo(fd, b.idevId, mockHwInfo(CAPS & ~0x1), { note: 'NO_DIRTY: no DIRTY_TRACKING capability' });
      await s.getHwInfo(fd, c.idevId, mockHwInfo(CAPS, 20), { note: 'PASID: width 20' });
      await s.hwptAlloc(fd, paging(b.idevId, ioas, HWPT_ALLOC_DIRTY_TRACKING), err('EOPNOTSUPP'));
      const dirty = await s.hwptAlloc(fd, paging(a.idevId, ioas, HWPT_ALLOC_DIRTY_TRACKING), ok(9));
      await s.mockReplace(fd, b.stdevId, dirty, err('EINVAL'));
      await s.mockDomain(fd, dirty, err('EINVAL'), NO_DIRTY);
      await s.mockReplace(fd, a.stdevId, dirty, ok(9));
      await s.mockDomain(fd, ioas, mock(10, 4, 11), 0, { note: 'MOCK_DOMAIN_FLAGS with no flags' });
      await s.closeIommufd(fd);
    },
  },
];
