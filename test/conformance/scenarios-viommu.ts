/**
 * Scenarios on vIOMMU, vDEVICE, unbind tombstones, teardown order and close
 * (kernel-uapi.md §3.10, §3.11, §4.2–§4.6, §6.3–§6.5), mirroring the
 * `iommufd_viommu` selftests, all on the selftest mock IOMMU.
 *
 * Not expressible through KernelBackend, so not covered here: FAULT,
 * vEVENTQ and HW_QUEUE objects, iommufd mmaps and their fds (§4.2 rows
 * that need them), and IOAS mappings.
 */
import { HWPT_ALLOC_NEST_PARENT, HWPT_ALLOC_PASID, HWPT_FAULT_ID_VALID, VIOMMU_TYPE } from '../../src/kernel/types.js';
import { err, mock, ok } from './harness.js';
import { id, nested, paging, selftestData, viommuFixture, type Scenario } from './fixtures.js';

const SELFTEST = VIOMMU_TYPE.SELFTEST;

export const VIOMMU_SCENARIOS: readonly Scenario[] = [
  {
    name: 'iommufd_viommu.viommu_auto_destroy',
    rules: '§4.4 closing the iommufd frees everything, mock devices included (they hold no file reference); a new context starts at ID 1',
    async run(s) {
      const f = await viommuFixture(s);
      await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: 0x99n }, ok(8));
      await s.mockReplace(f.fd, f.stdev, f.nested, ok(7));
      await s.closeIommufd(f.fd, 'with a mock device attached to a nested HWPT');
      const fd2 = await s.openIommufd();
      await s.ioasAlloc(fd2, ok(1), { note: 'fresh context' });
      await s.closeIommufd(fd2);
    },
  },
  {
    name: 'iommufd_viommu.viommu_negative_tests',
    rules: '§3.10 hwpt 0 ENOENT, not NEST_PARENT EINVAL, bad type EOPNOTSUPP, bad dev ENOENT; §4.2 parent held by the vIOMMU, vIOMMU held by its nested HWPT',
    async run(s) {
      const bare = await s.openIommufd();
      await s.ioasAlloc(bare, ok(1));
      await s.viommuAlloc(bare, { type: SELFTEST, devId: id(0), hwptId: id(0) }, err('ENOENT'), { note: 'no_viommu variant' });
      await s.vdeviceAlloc(bare, { viommuId: id(0), devId: id(0), virtId: 0x99n }, err('ENOENT'), { note: 'no_viommu variant' });
      await s.closeIommufd(bare);
      const f = await viommuFixture(s);
      await s.viommuAlloc(f.fd, { type: SELFTEST, devId: f.idev, hwptId: id(0) }, err('ENOENT'), { note: 'hwpt_id 0' });
      const plain = await s.hwptAlloc(f.fd, paging(f.idev, f.ioas), ok(8));
      await s.viommuAlloc(f.fd, { type: SELFTEST, devId: f.idev, hwptId: plain }, err('EINVAL'), { note: 'not a nesting parent' });
      await s.destroy(f.fd, plain, ok());
      await s.viommuAlloc(f.fd, { type: SELFTEST, devId: f.idev, hwptId: f.autoHwpt }, err('EINVAL'), { note: 'automatic HWPT' });
      await s.viommuAlloc(f.fd, { type: 0xdead, devId: f.idev, hwptId: f.parent }, err('EOPNOTSUPP'), { note: 'unsupported type' });
      await s.viommuAlloc(f.fd, { type: 0, devId: f.idev, hwptId: f.parent }, err('EOPNOTSUPP'), { note: 'type DEFAULT' });
      await s.viommuAlloc(f.fd, { type: 0xdead, devId: f.idev, hwptId: id(0) }, err('EOPNOTSUPP'), { note: 'type checked before hwpt_id (6.17+)' });
      await s.viommuAlloc(f.fd, { type: SELFTEST, devId: f.ioas, hwptId: f.parent }, err('ENOENT'), { note: 'dev_id is an IOAS' });
      await s.destroy(f.fd, f.parent, err('EBUSY'), { note: 'nest parent held by the vIOMMU' });
      await s.destroy(f.fd, f.viommu, err('EBUSY'), { note: 'vIOMMU held by its nested HWPT' });
      const second = await s.viommuAlloc(f.fd, { type: SELFTEST, devId: f.idev, hwptId: f.parent }, ok(8), { note: 'a second vIOMMU on the same parent' });
      await s.destroy(f.fd, second, ok());
      await s.closeIommufd(f.fd);
    },
  },
  {
    name: 'iommufd_viommu.viommu_alloc_nested_iopf',
    rules: '§3.9 nested flags through a vIOMMU (EOPNOTSUPP), bad fault id ENOENT; §6.3 attach to a vIOMMU nested HWPT needs a vDEVICE (ENOENT); attached HWPT EBUSY',
    async run(s) {
      const f = await viommuFixture(s);
      await s.hwptAlloc(f.fd, nested(f.idev, f.viommu, { flags: HWPT_FAULT_ID_VALID }), err('ENOENT'), { note: 'fault_id 0 names no FAULT' });
      await s.hwptAlloc(f.fd, nested(f.idev, f.viommu, { flags: HWPT_FAULT_ID_VALID | (1 << 31) }), err('EOPNOTSUPP'), { note: 'unknown flag bit' });
      await s.hwptAlloc(f.fd, nested(f.idev, f.viommu, { flags: HWPT_ALLOC_NEST_PARENT }), err('EOPNOTSUPP'));
      await s.hwptAlloc(f.fd, nested(f.idev, f.viommu, { dataType: 0 }), err('EINVAL'), { note: 'data_type NONE with data' });
      await s.hwptAlloc(f.fd, nested(f.idev, f.viommu, { dataType: 0xdead + 1 }), err('EOPNOTSUPP'), { note: 'wrong data_type' });
      await s.hwptAlloc(f.fd, nested(f.idev, f.viommu, { data: selftestData(3) }), err('EINVAL'), { note: 'data_len below offsetofend(iotlb)' });
      const n = await s.hwptAlloc(f.fd, nested(f.idev, f.viommu), ok(8));
      await s.mockReplace(f.fd, f.stdev, n, err('ENOENT'), { note: 'no vDEVICE yet' });
      await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: 0x99n }, ok(9));
      await s.mockReplace(f.fd, f.stdev, n, ok(8), { note: 'the automatic HWPT 4 goes' });
      await s.destroy(f.fd, n, err('EBUSY'), { note: 'attached' });
      await s.mockReplace(f.fd, f.stdev, f.nested, ok(7), { note: 'between two nested HWPTs' });
      await s.destroy(f.fd, n, ok());
      await s.mockReplace(f.fd, f.stdev, f.ioas, ok(4), { note: 'new automatic HWPT, lowest free ID' });
      await s.destroy(f.fd, f.nested, ok());
      await s.hwptAlloc(f.fd, nested(f.idev, f.viommu, { flags: HWPT_ALLOC_PASID }), ok(7), { note: 'PASID is allowed on a nested HWPT' });
      await s.closeIommufd(f.fd);
    },
  },
  {
    name: 'vdevice.virt_id_range',
    rules: '§3.11 virt_id is any u64 on a 64-bit kernel, 0 included; unique per vIOMMU only while its vDEVICE lives',
    async run(s) {
      const f = await viommuFixture(s);
      const v0 = await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: 0n }, ok(8), { note: 'virt_id 0' });
      await s.destroy(f.fd, v0, ok());
      await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: (1n << 64n) - 1n }, ok(8), { note: 'ULONG_MAX' });
      const b = await s.mockDomain(f.fd, f.ioas, mock(9, 4, 10));
      await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: b.idevId, virtId: (1n << 64n) - 1n }, err('EEXIST'));
      await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: b.idevId, virtId: 0n }, ok(11), { note: 'virt_id 0 is free again' });
      await s.mockReplace(f.fd, b.stdevId, f.nested, ok(7));
      await s.mockReplace(f.fd, f.stdev, f.nested, ok(7), { note: 'both devices on one nested HWPT' });
      await s.destroy(f.fd, f.autoHwpt, err('ENOENT'), { note: 'the shared automatic HWPT lost both users' });
      await s.closeIommufd(f.fd);
    },
  },
  {
    name: 'iommufd_viommu.vdevice_alloc',
    rules: '§3.11 bad viommu/dev ENOENT, one vDEVICE per device and unique virt_id per vIOMMU (EEXIST), re-create after destroy reuses the ID; §4.2 vIOMMU held by vDEVICEs',
    async run(s) {
      const f = await viommuFixture(s);
      await s.mockReplace(f.fd, f.stdev, f.nested, err('ENOENT'), { note: 'must allocate the vDEVICE first' });
      const v = await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: 0x99n }, ok(8));
      await s.mockReplace(f.fd, f.stdev, f.nested, ok(7));
      await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: 0x99n }, err('EEXIST'), { note: 'same device, same virt_id' });
      await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: 0x77n }, err('EEXIST'), { note: 'one vDEVICE per device (6.17+)' });
      const b = await s.mockDomain(f.fd, f.ioas, mock(4, 10, 9), undefined, { note: 'second mock device' });
      await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: b.idevId, virtId: 0x99n }, err('EEXIST'), { note: 'virt_id taken on this vIOMMU' });
      const v2 = await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: b.idevId, virtId: 0x88n }, ok(11));
      await s.vdeviceAlloc(f.fd, { viommuId: id(99), devId: b.idevId, virtId: 1n }, err('ENOENT'));
      await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: id(99), virtId: 1n }, err('ENOENT'));
      await s.destroy(f.fd, f.viommu, err('EBUSY'), { note: 'held by vDEVICEs and the nested HWPT' });
      await s.mockReplace(f.fd, f.stdev, f.ioas, ok(10), { note: 'joins the second device’s automatic HWPT' });
      await s.destroy(f.fd, v, ok());
      await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: 0x88n }, err('EEXIST'), { note: '0x88 belongs to the other device' });
      await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: 0x99n }, ok(8), { note: 're-created with the freed ID' });
      await s.destroy(f.fd, id(8), ok());
      await s.destroy(f.fd, v2, ok());
      await s.destroy(f.fd, f.nested, ok());
      await s.destroy(f.fd, f.viommu, ok());
      await s.destroy(f.fd, f.parent, ok());
      await s.closeIommufd(f.fd);
    },
  },
  {
    name: 'viommu.one_vdevice_per_device',
    rules: '§3.11 one vDEVICE per device across vIOMMUs (EEXIST, 6.17+); §6.3 the vDEVICE must be on the nested HWPT’s own vIOMMU (ENOENT); the check runs only when the driver attaches (replace onto the current HWPT is a no-op); nothing pins a vDEVICE while its device sits on a nested HWPT',
    async run(s) {
      const f = await viommuFixture(s);
      const b = await s.viommuAlloc(f.fd, { type: SELFTEST, devId: f.idev, hwptId: f.parent }, ok(8), { note: 'second vIOMMU on the parent' });
      const nestedB = await s.hwptAlloc(f.fd, nested(f.idev, b), ok(9));
      const vA = await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: 0x99n }, ok(10));
      await s.vdeviceAlloc(f.fd, { viommuId: b, devId: f.idev, virtId: 0x11n }, err('EEXIST'), { note: 'the device has a vDEVICE on the other vIOMMU' });
      await s.mockReplace(f.fd, f.stdev, nestedB, err('ENOENT'), { note: 'no vDEVICE on this vIOMMU' });
      await s.mockReplace(f.fd, f.stdev, f.nested, ok(7));
      await s.destroy(f.fd, vA, ok(), { note: 'while its device is on the nested HWPT' });
      await s.mockReplace(f.fd, f.stdev, f.nested, ok(7), { note: 'same HWPT: no driver call, no vDEVICE check' });
      await s.vdeviceAlloc(f.fd, { viommuId: b, devId: f.idev, virtId: 0x11n }, ok(4), { note: 'lowest free ID' });
      await s.mockReplace(f.fd, f.stdev, nestedB, ok(9));
      await s.mockReplace(f.fd, f.stdev, f.nested, err('ENOENT'));
      await s.destroy(f.fd, f.viommu, err('EBUSY'), { note: 'held by its nested HWPT' });
      await s.destroy(f.fd, f.nested, ok());
      await s.destroy(f.fd, f.viommu, ok());
      await s.destroy(f.fd, b, err('EBUSY'), { note: 'held by its vDEVICE and nested HWPT' });
      await s.closeIommufd(f.fd);
    },
  },
  {
    name: 'iommufd_viommu.vdevice_tombstone',
    rules: '§4.3 unbind (DESTROY stdev) destroys the vDEVICE and tombstones its ID: ENOENT forever, never reused, any lookup fails, virt_id free again, vIOMMU destroyable; close frees tombstones',
    async run(s) {
      const f = await viommuFixture(s);
      const v = await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: 0x99n }, ok(8));
      await s.mockReplace(f.fd, f.stdev, f.nested, ok(7));
      await s.destroy(f.fd, f.viommu, err('EBUSY'));
      await s.destroyMock(f.fd, f.stdev, ok(), { note: 'unbind while attached to the nested HWPT' });
      await s.destroy(f.fd, v, err('ENOENT'), { note: 'tombstone' });
      await s.destroy(f.fd, v, err('ENOENT'), { note: 'still a tombstone' });
      await s.destroy(f.fd, f.idev, err('ENOENT'), { note: 'the DEVICE id was freed' });
      await s.ioasAlloc(f.fd, ok(2));
      await s.ioasAlloc(f.fd, ok(3));
      await s.ioasAlloc(f.fd, ok(4));
      await s.ioasAlloc(f.fd, ok(9), { note: 'tombstoned ID 8 is skipped' });
      const b = await s.mockDomain(f.fd, f.ioas, mock(10, 12, 11));
      await s.hwptAlloc(f.fd, paging(b.idevId, v), err('EINVAL'), { note: 'tombstone as pt_id' });
      await s.vdeviceAlloc(f.fd, { viommuId: v, devId: b.idevId, virtId: 1n }, err('ENOENT'), { note: 'tombstone as viommu_id' });
      const v2 = await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: b.idevId, virtId: 0x99n }, ok(13), { note: 'virt_id 0x99 is free again' });
      await s.destroy(f.fd, v2, ok());
      await s.destroy(f.fd, f.nested, ok(), { note: 'detached by the unbind' });
      await s.destroy(f.fd, f.viommu, ok(), { note: 'no longer held by the dead vDEVICE' });
      await s.destroy(f.fd, f.parent, ok());
      await s.closeIommufd(f.fd);
      const fd2 = await s.openIommufd();
      await s.ioasAlloc(fd2, ok(1));
      await s.closeIommufd(fd2);
    },
  },
  {
    name: 'teardown.ebusy_per_reference',
    rules: '§4.2 every reference kind makes DESTROY EBUSY with no side effect: IOAS←HWPT (manual, automatic), parent←vIOMMU, parent←nested HWPT, vIOMMU←vDEVICE, vIOMMU←nested HWPT, HWPT←attachment, DEVICE←driver',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const m = await s.mockDomain(fd, ioas, mock(2, 4, 3));
      await s.destroy(fd, ioas, err('EBUSY'), { note: 'IOAS held by the automatic HWPT' });
      const parent = await s.hwptAlloc(fd, paging(m.idevId, ioas, HWPT_ALLOC_NEST_PARENT), ok(5));
      const viommu = await s.viommuAlloc(fd, { type: SELFTEST, devId: m.idevId, hwptId: parent }, ok(6));
      await s.destroy(fd, parent, err('EBUSY'), { note: 'parent held by the vIOMMU' });
      const vdev = await s.vdeviceAlloc(fd, { viommuId: viommu, devId: m.idevId, virtId: 0x99n }, ok(7));
      await s.destroy(fd, viommu, err('EBUSY'), { note: 'vIOMMU held by the vDEVICE' });
      await s.destroy(fd, vdev, ok());
      const n = await s.hwptAlloc(fd, nested(m.idevId, viommu), ok(7));
      await s.destroy(fd, viommu, err('EBUSY'), { note: 'vIOMMU held by the nested HWPT' });
      await s.destroy(fd, n, ok());
      await s.destroy(fd, viommu, ok());
      const direct = await s.hwptAlloc(fd, nested(m.idevId, parent), ok(6), { note: 'nested straight on the parent' });
      await s.destroy(fd, parent, err('EBUSY'), { note: 'parent held by the nested HWPT' });
      await s.mockReplace(fd, m.stdevId, direct, ok(6));
      await s.destroy(fd, direct, err('EBUSY'), { note: 'HWPT held by the attachment' });
      await s.destroy(fd, m.idevId, err('EBUSY'), { note: 'DEVICE held by its driver' });
      await s.mockReplace(fd, m.stdevId, parent, ok(5));
      await s.destroy(fd, direct, ok());
      await s.destroy(fd, parent, err('EBUSY'), { note: 'parent held by the attachment' });
      await s.destroy(fd, ioas, err('EBUSY'), { note: 'IOAS held by the manual HWPT' });
      await s.destroyMock(fd, m.stdevId, ok());
      await s.destroy(fd, ioas, err('EBUSY'), { note: 'a detached manual HWPT still holds the IOAS' });
      await s.destroy(fd, parent, ok());
      await s.destroy(fd, ioas, ok());
      await s.ioasAlloc(fd, ok(1), { note: 'the failed destroys changed nothing' });
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'teardown.legal_order',
    rules: '§4.6 the documented order succeeds step by step (mock unbind in place of closing the device fd) and leaves no tombstone',
    async run(s) {
      const f = await viommuFixture(s);
      const v = await s.vdeviceAlloc(f.fd, { viommuId: f.viommu, devId: f.idev, virtId: 0x99n }, ok(8));
      const direct = await s.hwptAlloc(f.fd, nested(f.idev, f.parent), ok(9));
      const manual = await s.hwptAlloc(f.fd, paging(f.idev, f.ioas), ok(10));
      await s.mockReplace(f.fd, f.stdev, f.nested, ok(7));
      await s.mockReplace(f.fd, f.stdev, f.parent, ok(5), { note: '4. move off the nested HWPT' });
      await s.destroy(f.fd, v, ok(), { note: '5. vDEVICE before the unbind' });
      await s.destroy(f.fd, f.nested, ok(), { note: '6. nested HWPTs' });
      await s.destroy(f.fd, direct, ok(), { note: '6. nested HWPTs' });
      await s.destroy(f.fd, f.viommu, ok(), { note: '7. vIOMMU' });
      await s.mockReplace(f.fd, f.stdev, manual, ok(10), { note: '8. off the parent' });
      await s.destroy(f.fd, f.parent, ok(), { note: '8. parent' });
      await s.destroyMock(f.fd, f.stdev, ok(), { note: '11. close the device' });
      await s.destroy(f.fd, manual, ok());
      await s.destroy(f.fd, f.ioas, ok(), { note: '10. IOAS' });
      await s.ioasAlloc(f.fd, ok(1), { note: 'empty, no tombstone' });
      await s.closeIommufd(f.fd);
    },
  },
];
