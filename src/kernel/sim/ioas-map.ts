/**
 * IOAS mappings: IOMMU_IOAS_MAP_FILE and IOMMU_IOAS_UNMAP (kernel-uapi.md
 * §3.4, §3.5), in the kernel's order of checks (iommufd_ioas_map_file,
 * iopt_alloc_area_pages, iopt_check_iova / iopt_alloc_iova,
 * iopt_unmap_iova_range), and what a domain (a HWPT_PAGING on the IOAS)
 * adds: the mock IOMMU's aperture as reserved IOVA and its page size as the
 * IOVA alignment (§6.3, iopt_table_add_domain).
 *
 * The fd is a real fd of this process: the sim checks it like the kernel's
 * fget (EBADF) and memfd_pin_folios (shmem only, range within i_size). The
 * kernel pins, and so reports file errors, when the area is loaded into a
 * domain; with no domain yet that may be deferred to the first attach (§3.4,
 * unverified). The sim always checks at map time.
 */
import { fstatSync, readlinkSync } from 'node:fs';
import type { IoasMapFileArgs } from '../types.js';
import { fail, type IoasArea, type IoasObject } from './objects.js';

const U64_MAX = (1n << 64n) - 1n;
/** ULONG_MAX on a 64-bit kernel. */
const ULONG_MAX = U64_MAX;
const PAGE_SIZE = 4096n;
/** HPAGE_SIZE: the largest alignment iopt_alloc_iova keeps (x86_64 with THP). */
const HPAGE_SIZE = 2n << 20n;
/** MOCK_APERTURE_START/LAST and MOCK_PAGE_SIZE (iommufd_test.h, MOCK_IOMMUPT_DEFAULT). */
const MOCK_APERTURE_START = 1n << 24n;
const MOCK_APERTURE_LAST = (1n << 31n) - 1n;
const MOCK_PAGE_SIZE = 2048n;

interface Span {
  start: bigint;
  last: bigint;
}

function hasDomain(ioas: IoasObject): boolean {
  return ioas.hwpts.length > 0;
}

/** `iopt->iova_alignment`: 1 without a domain, the domain's smallest page with one. */
function iovaAlignment(ioas: IoasObject): bigint {
  return hasDomain(ioas) ? MOCK_PAGE_SIZE : 1n;
}

/** `iopt->reserved_itree`: with a mock domain, everything outside its aperture. */
function reserved(ioas: IoasObject): Span[] {
  if (!hasDomain(ioas)) return [];
  return [
    { start: 0n, last: MOCK_APERTURE_START - 1n },
    { start: MOCK_APERTURE_LAST + 1n, last: ULONG_MAX },
  ];
}

function last(a: IoasArea): bigint {
  return a.iova + a.length - 1n;
}

function intersects(a: Span, b: Span): boolean {
  return a.start <= b.last && b.start <= a.last;
}

/**
 * iopt_table_add_domain for the IOAS's first domain: an area outside the
 * aperture or off the mock page size cannot be mapped into it (EADDRINUSE).
 */
export function checkDomainFits(ioas: IoasObject): void {
  if (hasDomain(ioas)) return;
  for (const a of ioas.areas) {
    if ((a.iova | a.length) % MOCK_PAGE_SIZE !== 0n) fail('EADDRINUSE', `area at 0x${a.iova.toString(16)} is not ${MOCK_PAGE_SIZE}-byte aligned`);
    if (a.iova < MOCK_APERTURE_START || last(a) > MOCK_APERTURE_LAST) fail('EADDRINUSE', `area at 0x${a.iova.toString(16)} is outside the mock aperture`);
  }
}

/** fget + memfd_pin_folios: the fd must be open, shmem, and cover the range. */
function checkFile(fd: number): { dev: number; ino: number; size: bigint } {
  let stat;
  try {
    stat = fstatSync(fd, { bigint: true });
  } catch {
    fail('EBADF', `fd ${fd} is not open`);
  }
  return { dev: Number(stat.dev), ino: Number(stat.ino), size: stat.size };
}

function isShmem(fd: number): boolean {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:');
  } catch {
    return false;
  }
}

function roundupPow2(n: bigint): bigint {
  let p = 1n;
  while (p < n) p <<= 1n;
  return p;
}

/** 1 << __ffs64(n), n ≠ 0: the largest power of two dividing n. */
function lowestBit(n: bigint): bigint {
  return n & -n;
}

/**
 * iopt_alloc_iova: the lowest hole in [PAGE_SIZE, ULONG_MAX - PAGE_SIZE]
 * outside reserved ranges and areas, aligned to keep the file offset's
 * alignment (up to a huge page) and its offset within a page.
 */
function allocIova(ioas: IoasObject, start: bigint, length: bigint): bigint {
  if (length >= ULONG_MAX / 2n) fail('EOVERFLOW', 'length too large for automatic IOVA');
  const pageOffset = start % PAGE_SIZE;
  const byLength = roundupPow2(length);
  let align = start === 0n || byLength < lowestBit(start) ? byLength : lowestBit(start);
  if (align > HPAGE_SIZE) align = HPAGE_SIZE;
  if (align < iovaAlignment(ioas)) fail('EINVAL', `IOVA alignment ${align} is below the IOAS's ${iovaAlignment(ioas)}`);
  const used = [...reserved(ioas), ...ioas.areas.map((a) => ({ start: a.iova, last: last(a) }))].sort((a, b) => (a.start < b.start ? -1 : 1));
  const fit = (holeStart: bigint, holeLast: bigint): bigint | undefined => {
    const aligned = ((holeStart + align - 1n) & ~(align - 1n)) | pageOffset;
    return aligned >= holeLast || holeLast - aligned < length - 1n ? undefined : aligned;
  };
  let cursor = PAGE_SIZE;
  const top = ULONG_MAX - PAGE_SIZE;
  for (const span of used) {
    if (span.start > cursor) {
      const found = fit(cursor, span.start - 1n < top ? span.start - 1n : top);
      if (found !== undefined) return found;
    }
    if (span.last + 1n > cursor) cursor = span.last + 1n;
    if (cursor > top) break;
  }
  const found = cursor <= top ? fit(cursor, top) : undefined;
  if (found === undefined) fail('ENOSPC', `no free IOVA range of ${length} bytes`);
  return found;
}

/** iopt_check_iova for a fixed IOVA. */
function checkFixed(ioas: IoasObject, iova: bigint, length: bigint): void {
  if (iova % iovaAlignment(ioas) !== 0n) fail('EINVAL', `iova 0x${iova.toString(16)} is not ${iovaAlignment(ioas)}-byte aligned`);
  const end = iova + length - 1n;
  if (end > U64_MAX) fail('EOVERFLOW', 'iova + length overflows');
  const range = { start: iova, last: end };
  if (reserved(ioas).some((r) => intersects(r, range))) fail('EINVAL', `[0x${iova.toString(16)}, 0x${end.toString(16)}] overlaps reserved IOVA`);
  const clash = ioas.areas.find((a) => intersects({ start: a.iova, last: last(a) }, range));
  if (clash) fail('EEXIST', `[0x${iova.toString(16)}, 0x${end.toString(16)}] overlaps the area at 0x${clash.iova.toString(16)}`);
}

/** IOMMU_IOAS_MAP_FILE on an IOAS already looked up; returns the IOVA. */
export function mapFile(ioas: () => IoasObject, args: IoasMapFileArgs): bigint {
  const readable = args.readable ?? true;
  const writeable = args.writeable ?? true;
  const fixed = args.iova !== undefined;
  const iova = args.iova ?? 0n;
  if (iova >= ULONG_MAX || args.length >= ULONG_MAX) fail('EOVERFLOW', 'iova or length ≥ ULONG_MAX');
  if (!readable && !writeable) fail('EINVAL', 'neither READABLE nor WRITEABLE');
  const target = ioas();
  const file = checkFile(args.fd);
  if (args.length !== 0n && args.start + args.length - 1n > U64_MAX) fail('EOVERFLOW', 'start + length overflows');
  if (args.length === 0n || args.length % iovaAlignment(target) !== 0n) fail('EINVAL', `length ${args.length} is 0 or not ${iovaAlignment(target)}-byte aligned`);
  const at = fixed ? (checkFixed(target, iova, args.length), iova) : allocIova(target, args.start, args.length);
  if (!isShmem(args.fd)) fail('EINVAL', `fd ${args.fd} is not a memfd (memfd_pin_folios takes shmem only)`);
  if (args.start + args.length > file.size) fail('EINVAL', `[${args.start}, ${args.start + args.length}) is past the file's ${file.size} bytes`);
  const area: IoasArea = { iova: at, length: args.length, start: args.start, readable, writeable, file: { dev: file.dev, ino: file.ino } };
  const i = target.areas.findIndex((a) => a.iova > at);
  target.areas.splice(i < 0 ? target.areas.length : i, 0, area);
  return at;
}

/**
 * IOMMU_IOAS_UNMAP; returns the bytes unmapped. Areas are removed in IOVA
 * order and never split: reaching one only partly covered fails with ENOENT
 * after the earlier ones are already gone, as in the kernel.
 */
export function unmap(ioas: () => IoasObject, iova: bigint, length: bigint): bigint {
  const target = ioas();
  let range: Span;
  const all = iova === 0n && length === U64_MAX;
  if (all) range = { start: 0n, last: ULONG_MAX };
  else {
    if (iova >= ULONG_MAX || length >= ULONG_MAX) fail('EOVERFLOW', 'iova or length ≥ ULONG_MAX');
    if (length === 0n) fail('EINVAL', 'length 0');
    if (iova + length - 1n > U64_MAX) fail('EOVERFLOW', 'iova + length overflows');
    range = { start: iova, last: iova + length - 1n };
  }
  let unmapped = 0n;
  for (;;) {
    const i = target.areas.findIndex((a) => intersects({ start: a.iova, last: last(a) }, range));
    if (i < 0) break;
    const area = target.areas[i]!;
    if (area.iova < range.start || last(area) > range.last) {
      fail('ENOENT', `the area at 0x${area.iova.toString(16)} (${area.length} bytes) is only partly in the range`);
    }
    target.areas.splice(i, 1);
    unmapped += area.length;
  }
  // Nothing to unmap is ENOENT, except for unmap-all, which succeeds on an empty IOAS.
  if (unmapped === 0n && !all) fail('ENOENT', 'no mapping in the range');
  return unmapped;
}
