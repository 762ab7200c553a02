#!/usr/bin/env node
// Guest smoke probe for the real-kernel lane (runs inside the QEMU guest, see ../README.md).
//
// Proves, on a real kernel, the path the `linux` backend will use: koffi loads in the guest, an
// ioctl through koffi reaches iommufd, output structs come back and errno is readable.
//   1. open("/dev/iommu", O_RDWR)
//   2. IOMMU_IOAS_ALLOC (0x3B81) {u32 size=12, u32 flags=0, u32 out_ioas_id}  -> 0, id >= 1
//   3. IOMMU_DESTROY (0x3B80) {u32 size=8, u32 id=999}                       -> -1, ENOENT
//   4. IOMMU_TEST_CMD (0x3BA0) {u32 size=72, u32 op=0, ...}                   -> -1, EOPNOTSUPP
//      (EOPNOTSUPP means CONFIG_IOMMUFD_TEST is built in; ENOTTY would mean it is not)
//   5. IOMMU_DESTROY(ioas)                                                    -> 0
//   6. the VFIO cdev of the edu device exists (guest-init bound it to vfio-pci)
// Prints one JSON line {"probe":"iommufd-smoke","ok":...,"checks":[...]} and exits 0 only if
// every check passed. Plain Node ESM, no build step; uses the project's node_modules/koffi.
import fs from 'node:fs';
import os from 'node:os';
import koffi from 'koffi';

const IOMMU_DESTROY = 0x3b80;
const IOMMU_IOAS_ALLOC = 0x3b81;
const IOMMU_TEST_CMD = 0x3ba0;
const ENOENT = 2;
const ENOTTY = 25;
const EOPNOTSUPP = 95;

const libc = koffi.load('libc.so.6');
// glibc declares ioctl variadic; a pointer third argument is ABI-identical on x86_64/arm64.
const ioctl = libc.func('int ioctl(int fd, unsigned long req, void *arg)');

function call(fd, req, buf) {
  koffi.errno(0);
  const rc = ioctl(fd, req, buf);
  return { rc, errno: rc < 0 ? koffi.errno() : 0 };
}

const checks = [];
function check(name, pass, detail) {
  checks.push({ name, pass: Boolean(pass), ...detail });
}

const info = {
  kernel: os.release(),
  node: process.version,
  koffi: koffi.version ?? null,
  vfioDevices: [],
};

let fd = -1;
try {
  try {
    fd = fs.openSync('/dev/iommu', fs.constants.O_RDWR);
    check('open /dev/iommu', true, { fd });
  } catch (e) {
    check('open /dev/iommu', false, { error: e.code ?? String(e) });
    throw new Error('no /dev/iommu (not running in the lane guest?)');
  }

  // IOAS_ALLOC
  const alloc = Buffer.alloc(12);
  alloc.writeUInt32LE(12, 0); // size
  alloc.writeUInt32LE(0, 4); // flags
  const a = call(fd, IOMMU_IOAS_ALLOC, alloc);
  const ioasId = alloc.readUInt32LE(8);
  check('IOAS_ALLOC', a.rc === 0 && ioasId >= 1, { rc: a.rc, errno: a.errno, ioasId });

  // DESTROY(999) -> ENOENT
  const d999 = Buffer.alloc(8);
  d999.writeUInt32LE(8, 0);
  d999.writeUInt32LE(999, 4);
  const d = call(fd, IOMMU_DESTROY, d999);
  check('DESTROY(999) -> ENOENT', d.rc === -1 && d.errno === ENOENT, { rc: d.rc, errno: d.errno });

  // TEST_CMD op 0 -> EOPNOTSUPP (self-test built in)
  const tc = Buffer.alloc(72);
  tc.writeUInt32LE(72, 0); // size
  tc.writeUInt32LE(0, 4); // op 0: not a valid op
  const t = call(fd, IOMMU_TEST_CMD, tc);
  check('TEST_CMD(op 0) -> EOPNOTSUPP', t.rc === -1 && t.errno === EOPNOTSUPP, {
    rc: t.rc,
    errno: t.errno,
    hint: t.errno === ENOTTY ? 'CONFIG_IOMMUFD_TEST is not built in' : undefined,
  });

  // DESTROY(ioas) -> 0
  if (a.rc === 0) {
    const dio = Buffer.alloc(8);
    dio.writeUInt32LE(8, 0);
    dio.writeUInt32LE(ioasId, 4);
    const r = call(fd, IOMMU_DESTROY, dio);
    check('DESTROY(ioas)', r.rc === 0, { rc: r.rc, errno: r.errno });
  }

  // The edu device's VFIO cdev.
  try {
    info.vfioDevices = fs.readdirSync('/dev/vfio/devices').filter((n) => n.startsWith('vfio'));
  } catch {
    /* reported below */
  }
  check('VFIO cdev present', info.vfioDevices.length > 0, { devices: info.vfioDevices });
} catch (e) {
  info.error = e instanceof Error ? e.message : String(e);
} finally {
  if (fd >= 0) fs.closeSync(fd);
}

const ok = checks.length > 0 && checks.every((c) => c.pass) && !info.error;
console.log(JSON.stringify({ probe: 'iommufd-smoke', ok, ...info, checks }));
const out = process.env.VFIO_BROKER_RESULTS_DIR;
if (out) {
  fs.writeFileSync(`${out}/probe.json`, JSON.stringify({ probe: 'iommufd-smoke', ok, ...info, checks }, null, 2) + '\n');
}
process.exitCode = ok ? 0 : 1;
