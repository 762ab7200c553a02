import { describe, expect, it } from 'vitest';
import { IOCTL, IOCTL_DEFS, IOCTL_NAMES, ioctlIO, ioctlNumbers, ioNoneBits, type IoctlName } from '../../src/kernel/linux/ioctl-numbers.js';
import { parseLayout, parseUapiTables, readReference } from './reference.js';

const fromLayout = parseLayout(readReference('struct-layout-x86_64.txt')).ioctls;
const fromTables = parseUapiTables(readReference('kernel-uapi.md'));

function isKnown(name: string): name is IoctlName {
  return Object.prototype.hasOwnProperty.call(IOCTL_DEFS, name);
}

describe('ioctl numbers', () => {
  it('every NAME = 0x... line of struct-layout-x86_64.txt matches (generic encoding)', () => {
    expect(fromLayout.size).toBeGreaterThanOrEqual(30);
    for (const arch of ['x64', 'arm64', 'riscv64', 's390x', 'loong64']) {
      const table = ioctlNumbers(arch);
      for (const [name, value] of fromLayout) {
        expect(isKnown(name), `${name} missing from IOCTL_DEFS`).toBe(true);
        if (isKnown(name)) expect(table[name], `${name} on ${arch}`).toBe(value);
      }
    }
  });

  it('ioctls the layout file omits match the kernel-uapi.md §1.2/§1.3 tables', () => {
    const generic = ioctlNumbers('x64');
    for (const name of IOCTL_NAMES) {
      const expected = fromLayout.get(name) ?? fromTables.get(name);
      expect(expected, `${name} is in neither reference`).toBeDefined();
      expect(generic[name], name).toBe(expected);
    }
  });

  it('powerpc, mips, sparc and alpha add _IOC_NONE = 1 << 29 (§1.1)', () => {
    expect(ioNoneBits('ppc64')).toBe(0x2000_0000);
    expect(ioNoneBits('mips')).toBe(0x2000_0000);
    expect(ioNoneBits('x64')).toBe(0);
    const ppc = ioctlNumbers('ppc64');
    for (const [name, value] of fromLayout) if (isKnown(name)) expect(ppc[name]).toBe(value + 0x2000_0000);
    expect(ppc.IOMMU_DESTROY).toBe(0x2000_3b80);
  });

  it('IOCTL follows process.arch', () => {
    expect(IOCTL).toEqual(ioctlNumbers(process.arch));
    expect(ioctlIO(0x3b, 0x80)).toBe(IOCTL.IOMMU_DESTROY);
  });

  it('iommufd and VFIO ranges do not overlap and every number is unique', () => {
    const values = IOCTL_NAMES.map((n) => IOCTL[n]);
    expect(new Set(values).size).toBe(values.length);
    for (const name of IOCTL_NAMES) {
      const nr = IOCTL_DEFS[name].nr;
      if (IOCTL_DEFS[name].family === 'iommufd') expect(nr).toBeGreaterThanOrEqual(0x80);
      else expect(nr).toBeLessThan(0x80);
    }
  });
});
