/**
 * Scenarios on a real VFIO cdev (kernel-uapi.md §3.15–§3.17, §4.4, §4.5).
 * In the QEMU lane the device is the `edu` device behind the emulated Intel
 * VT-d; on the sim it is a demo device behind the sim's IOMMU, which models
 * the selftest mock IOMMU. Everything the iommufd core and VFIO decide is
 * hardware-independent and compared in full. Exclusions (rare, each with its
 * reason in `hardware`):
 *
 * - GET_HW_INFO values (type, capabilities, data, max PASID): they describe
 *   the IOMMU (INTEL_VTD vs SELFTEST), so only success is compared.
 * - NEST_PARENT HWPT_ALLOC and VIOMMU_ALLOC for the VFIO device: the mock
 *   IOMMU supports nesting and vIOMMUs, the emulated VT-d has no nesting and
 *   Intel has no vIOMMU ops (EOPNOTSUPP, §3.10, §5.2); nothing is compared.
 *   They run last in their scenario so the IDs they might allocate cannot
 *   shift later steps.
 *
 * Never exercised because the answer depends on the IOMMU driver and the
 * sim does not model driver identity: attaching the VFIO device to a mock
 * device's HWPT (or sharing an IOAS's automatic HWPT between them), nested
 * HWPTs on the mock parent for the VFIO device, DIRTY_TRACKING and driver
 * data for the VFIO device.
 */
import { HWPT_ALLOC_NEST_PARENT, VIOMMU_TYPE } from '../../src/kernel/types.js';
import { err, mock, ok, type HardwareDependence } from './harness.js';
import { id, nested, paging, type Scenario } from './fixtures.js';

const HW_INFO: HardwareDependence = {
  compare: 'outcome',
  why: 'GET_HW_INFO describes the IOMMU: INTEL_VTD data in the lane, SELFTEST on the sim; only success is compared',
};
const NESTING: HardwareDependence = {
  compare: 'none',
  why: 'the mock IOMMU supports nesting and vIOMMUs; the emulated VT-d does not (EOPNOTSUPP)',
};

export const VFIO_SCENARIOS: readonly Scenario[] = [
  {
    name: 'vfio.bind_attach_detach',
    vfio: true,
    rules: '§3.15 EINVAL before bind, for a second bind and for a second bound file; §3.16 ATTACH(IOAS) makes an automatic HWPT, again is a no-op; §3.1 DEVICE EBUSY; §3.17 DETACH frees the automatic HWPT and succeeds with nothing attached; §4.5 close frees the DEVICE id',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const dev = await s.openDevice();
      await s.attach(dev, ioas, err('EINVAL'), { note: 'not bound yet' });
      await s.detach(dev, err('EINVAL'), { note: 'not bound yet' });
      const devId = await s.bind(dev, fd, ok(2));
      await s.bind(dev, fd, err('EINVAL'), { note: 'same file bound twice' });
      const other = await s.openDevice('open(2) of the same cdev succeeds again');
      await s.bind(other, fd, err('EINVAL'), { note: 'the device is bound through another file' });
      await s.closeDevice(other);
      await s.getHwInfo(fd, devId, ok({ type: '0xfeedbeef', capabilities: '0x9', maxPasidLog2: 0, data: '00000000efbeadde' }), { hardware: HW_INFO });
      await s.attach(dev, ioas, ok(3), { note: 'automatic HWPT' });
      await s.attach(dev, ioas, ok(3), { note: 'replace onto the same IOAS: no-op' });
      await s.destroy(fd, devId, err('EBUSY'), { note: 'DEVICE id' });
      await s.destroy(fd, id(3), err('EBUSY'), { note: 'attached automatic HWPT' });
      await s.destroy(fd, ioas, err('EBUSY'), { note: 'IOAS held by the automatic HWPT' });
      await s.detach(dev, ok());
      await s.destroy(fd, id(3), err('ENOENT'), { note: 'freed with its last attachment' });
      await s.detach(dev, ok(), { note: 'nothing attached' });
      await s.destroy(fd, devId, err('EBUSY'), { note: 'still bound' });
      await s.ioasAlloc(fd, ok(3));
      await s.closeDevice(dev);
      await s.ioasAlloc(fd, ok(2), { note: 'the DEVICE id was freed by close' });
      await s.destroy(fd, ioas, ok());
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'vfio.replace',
    vfio: true,
    rules: '§3.16 replace between automatic and manual HWPTs and across IOASes (new automatic HWPT allocated before the old is freed), lookups ENOENT/EINVAL; §4.5 close destroys the automatic HWPT',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const dev = await s.openDevice();
      const devId = await s.bind(dev, fd, ok(2));
      const auto = await s.attach(dev, ioas, ok(3));
      const ioas2 = await s.ioasAlloc(fd, ok(4));
      const manual = await s.hwptAlloc(fd, paging(devId, ioas), ok(5));
      await s.attach(dev, manual, ok(5), { note: 'automatic → manual' });
      await s.destroy(fd, auto, err('ENOENT'), { note: 'the automatic HWPT died' });
      await s.destroy(fd, manual, err('EBUSY'), { note: 'attached' });
      await s.attach(dev, ioas2, ok(3), { note: 'manual → automatic on another IOAS' });
      await s.destroy(fd, manual, ok());
      await s.attach(dev, ioas, ok(5), { note: 'new automatic HWPT before the old one is freed' });
      await s.destroy(fd, id(3), err('ENOENT'));
      await s.attach(dev, devId, err('EINVAL'), { note: 'pt_id is a DEVICE' });
      await s.attach(dev, id(99), err('ENOENT'), { note: 'pt_id unknown' });
      await s.attach(dev, id(0), err('ENOENT'), { note: 'pt_id 0' });
      await s.attach(dev, id(5), ok(5), { note: 'onto the current HWPT: no-op' });
      await s.closeDevice(dev);
      await s.destroy(fd, id(5), err('ENOENT'), { note: 'close detached and freed it' });
      await s.destroy(fd, ioas, ok());
      await s.destroy(fd, ioas2, ok());
      await s.ioasAlloc(fd, ok(1));
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'vfio.close_device_on_manual_hwpt',
    vfio: true,
    rules: '§4.5 closing the device fd drops its attachment: a manual HWPT survives and becomes destroyable, the IOAS after it; the DEVICE id is freed',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const dev = await s.openDevice();
      const devId = await s.bind(dev, fd, ok(2));
      const manual = await s.hwptAlloc(fd, paging(devId, ioas), ok(3));
      await s.attach(dev, manual, ok(3));
      await s.destroy(fd, manual, err('EBUSY'), { note: 'attached' });
      await s.destroy(fd, ioas, err('EBUSY'), { note: 'held by the manual HWPT' });
      await s.closeDevice(dev);
      await s.destroy(fd, devId, err('ENOENT'), { note: 'freed by close' });
      await s.destroy(fd, ioas, err('EBUSY'), { note: 'still held by the manual HWPT' });
      await s.destroy(fd, manual, ok());
      await s.destroy(fd, ioas, ok());
      await s.ioasAlloc(fd, ok(1));
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'vfio.close_iommufd_first',
    vfio: true,
    rules: '§4.4 a bound device holds the iommufd file: after close(iommufd) ATTACH/DETACH on the device fd still work with that context’s IDs; the last device close releases the context',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const dev = await s.openDevice();
      await s.bind(dev, fd, ok(2));
      await s.closeIommufd(fd, 'the device still holds the file');
      await s.attach(dev, ioas, ok(3), { note: 'the context is alive' });
      await s.attach(dev, id(99), err('ENOENT'));
      await s.detach(dev, ok());
      await s.attach(dev, ioas, ok(3));
      await s.closeDevice(dev, 'last reference: the context is released');
      const fd2 = await s.openIommufd();
      const dev2 = await s.openDevice();
      await s.bind(dev2, fd2, ok(1), { note: 'fresh context; the device is free again' });
      await s.closeDevice(dev2);
      await s.closeIommufd(fd2);
    },
  },
  {
    name: 'vfio.cross_iommu',
    vfio: true,
    rules: '§3.9/§3.11 a device behind another IOMMU instance than the vIOMMU: HWPT_ALLOC through the vIOMMU and VDEVICE_ALLOC are EINVAL (on both backends the VFIO device is never behind the mock IOMMU instance)',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const m = await s.mockDomain(fd, ioas, mock(2, 4, 3));
      const parent = await s.hwptAlloc(fd, paging(m.idevId, ioas, HWPT_ALLOC_NEST_PARENT), ok(5));
      const viommu = await s.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: parent }, ok(6));
      const dev = await s.openDevice();
      const devId = await s.bind(dev, fd, ok(7));
      await s.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n }, err('EINVAL'));
      await s.hwptAlloc(fd, nested(devId, viommu), err('EINVAL'));
      await s.vdeviceAlloc(fd, { viommuId: viommu, devId: m.idevId, virtId: 0x99n }, ok(8));
      await s.closeDevice(dev);
      await s.ioasAlloc(fd, ok(7), { note: 'the VFIO DEVICE id was freed' });
      await s.closeIommufd(fd);
    },
  },
  {
    name: 'vfio.hw_info_and_nesting',
    vfio: true,
    rules: 'hardware-dependent by design (recorded, not compared): GET_HW_INFO values, NEST_PARENT HWPT and vIOMMU for the VFIO device',
    async run(s) {
      const fd = await s.openIommufd();
      const ioas = await s.ioasAlloc(fd, ok(1));
      const dev = await s.openDevice();
      const devId = await s.bind(dev, fd, ok(2));
      await s.attach(dev, ioas, ok(3));
      await s.getHwInfo(fd, devId, ok({ type: '0xfeedbeef', capabilities: '0x9', maxPasidLog2: 0, data: '00000000efbeadde' }), { hardware: HW_INFO });
      const parent = await s.hwptAlloc(fd, paging(devId, ioas, HWPT_ALLOC_NEST_PARENT), ok(4), { hardware: NESTING });
      await s.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId, hwptId: parent }, ok(5), { hardware: NESTING });
      await s.closeDevice(dev);
      await s.closeIommufd(fd);
    },
  },
];
