/**
 * QEMU's `edu` teaching device (hw/misc/edu.c, QEMU 7.2) driven through a
 * VFIO device fd, for the guest tests: BAR0 registers, PCI command bits and
 * its DMA engine, which copies between a bus address (an IOVA, translated by
 * the VT-d domain iommufd attached) and a 4 KiB buffer inside the device.
 */
import { readRegister, regionInfo, writeRegister, type RegionInfo } from '../../src/kernel/linux/vfio-region.js';
import { VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX } from '../../src/kernel/linux/structs.js';

export const EDU_REG = { ID: 0x00, DMA_SRC: 0x80, DMA_DST: 0x88, DMA_COUNT: 0x90, DMA_CMD: 0x98 } as const;
/** The device-side DMA buffer: bus addresses 0x40000..0x40fff of the device. */
export const EDU_DMA_BUF = 0x40000;
const DMA_RUN = 0x1;
/** DMA_CMD bit 1: 0 reads RAM into the buffer (FROM_PCI), 1 writes the buffer to RAM (TO_PCI). */
const DMA_TO_RAM = 0x2;
/** QEMU 7.2 aborts the VM (hw_error) when a transfer ends exactly at the buffer's end; stay below it. */
export const EDU_DMA_MAX = 2048;
/** edu clamps bus addresses to its 28-bit DMA mask. */
export const EDU_DMA_LIMIT = 1n << 28n;

const PCI_COMMAND = 0x04;
const PCI_COMMAND_MEMORY = 0x2;
const PCI_COMMAND_MASTER = 0x4;

export interface Edu {
  fd: number;
  bar0: RegionInfo;
  config: RegionInfo;
}

export function openEdu(fd: number): Edu {
  return { fd, bar0: regionInfo(fd, VFIO_PCI_BAR0_REGION_INDEX), config: regionInfo(fd, VFIO_PCI_CONFIG_REGION_INDEX) };
}

/** The identification register: 0xRRrr00ed (major, minor, 0x00, 0xed). */
export function eduId(edu: Edu): number {
  return readRegister(edu.fd, edu.bar0, EDU_REG.ID, 4);
}

/** Sets memory decoding and bus mastering in the command register (vfio-pci passes MASTER through); returns it before and after. */
export function enableDma(edu: Edu): { before: number; after: number } {
  const before = readRegister(edu.fd, edu.config, PCI_COMMAND, 2);
  writeRegister(edu.fd, edu.config, PCI_COMMAND, 2, before | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  return { before, after: readRegister(edu.fd, edu.config, PCI_COMMAND, 2) };
}

/** Restores the command register (bus mastering off again). */
export function restoreCommand(edu: Edu, value: number): void {
  writeRegister(edu.fd, edu.config, PCI_COMMAND, 2, value);
}

/**
 * One DMA transfer between bus address `iova` and the device buffer at
 * `bufOffset`; waits until the device clears RUN (its timer fires after
 * 100 ms of virtual time). `toRam`: device buffer → RAM.
 */
export async function eduDma(edu: Edu, o: { iova: bigint; bufOffset: number; length: number; toRam: boolean }, timeoutMs = 30_000): Promise<void> {
  if (o.length <= 0 || o.bufOffset < 0 || o.bufOffset + o.length > EDU_DMA_MAX) throw new RangeError('edu: transfer outside the safe part of the DMA buffer');
  if (o.iova + BigInt(o.length) > EDU_DMA_LIMIT) throw new RangeError('edu: IOVA beyond its 28-bit DMA mask');
  const buf = EDU_DMA_BUF + o.bufOffset;
  // 32-bit writes: edu stores them as the whole (zero-extended) register.
  writeRegister(edu.fd, edu.bar0, EDU_REG.DMA_SRC, 4, o.toRam ? buf : Number(o.iova));
  writeRegister(edu.fd, edu.bar0, EDU_REG.DMA_DST, 4, o.toRam ? Number(o.iova) : buf);
  writeRegister(edu.fd, edu.bar0, EDU_REG.DMA_COUNT, 4, o.length);
  writeRegister(edu.fd, edu.bar0, EDU_REG.DMA_CMD, 4, DMA_RUN | (o.toRam ? DMA_TO_RAM : 0));
  const deadline = Date.now() + timeoutMs;
  while (readRegister(edu.fd, edu.bar0, EDU_REG.DMA_CMD, 4) & DMA_RUN) {
    if (Date.now() > deadline) throw new Error(`edu: DMA still running after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
