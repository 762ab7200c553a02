/**
 * The linux backend's FFI cost: ioctl(FIONREAD) on an empty pipe through
 * koffi, against the same syscall looped in C (bench/c/syscall_cost.c,
 * compiled here with gcc into a small shared library whose loop times itself
 * with clock_gettime), in many short interleaved rounds in one process.
 * koffi's overhead is the per-round difference per call.
 *
 * Three ways to pass the argument: a Buffer koffi marshals (reused, so
 * already off the V8 heap), a fixed address as an integer (the project's
 * argument area), and a fresh 32-byte Buffer per call, which is what a
 * newly encoded struct is and what the backend passed before the area.
 *
 * Node has no native ioctl binding, so there is no Node-native ioctl
 * baseline; fs.fstatSync vs C fstat is reported as a reference for what
 * Node's own C++ bindings add to a syscall. The floor for any Node-API FFI is
 * measured directly: a hand-written Node-API addon (bench/c/napi_floor.c,
 * built with Node's own headers) making the same call with the same three
 * integer arguments.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, fstatSync, mkdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import koffi, { type LibraryHandle } from 'koffi';
import { CACHE, ROOT, serveParent } from './lib/child.js';
import { median, percentile } from './lib/stats.js';

const SOURCE = path.join(ROOT, 'bench', 'c', 'syscall_cost.c');
const LIBRARY = path.join(CACHE, 'libsyscall_cost.so');
const NAPI_SOURCE = path.join(ROOT, 'bench', 'c', 'napi_floor.c');
const NAPI_ADDON = path.join(CACHE, 'napi_floor.node');
/** Where official Node builds (and the Docker image) keep node_api.h. */
const NODE_INCLUDE = path.resolve(path.dirname(process.execPath), '..', 'include', 'node');

/** Compiles `source` into `output` unless it is up to date; returns why it failed, if it did. */
function buildC(source: string, output: string, extraArgs: string[] = []): string | undefined {
  mkdirSync(CACHE, { recursive: true });
  if (existsSync(output) && statSync(output).mtimeMs >= statSync(source).mtimeMs) return undefined;
  try {
    execFileSync('gcc', ['-O2', '-shared', '-fPIC', ...extraArgs, '-o', output, source], { stdio: 'pipe' });
    return undefined;
  } catch (err) {
    return `gcc failed on ${path.basename(source)}: ${(err as Error).message.split('\n')[0]}`;
  }
}

interface NapiFloor {
  ioctl(fd: number, request: number, address: number): number;
  getppid(): number;
}

/** The hand-written Node-API addon, or why it is not there (no headers, no compiler). */
function loadNapiFloor(): NapiFloor | string {
  if (!existsSync(path.join(NODE_INCLUDE, 'node_api.h'))) return `no Node-API headers at ${NODE_INCLUDE}`;
  const buildError = buildC(NAPI_SOURCE, NAPI_ADDON, [`-I${NODE_INCLUDE}`]);
  if (buildError) return buildError;
  return createRequire(import.meta.url)(NAPI_ADDON) as NapiFloor;
}

type IoctlFn = (fd: number, request: number, arg: Buffer) => number;

async function ffi(args: { n: number; rounds: number; asyncN: number }) {
  const buildError = buildC(SOURCE, LIBRARY);
  if (buildError) return { error: buildError };
  const napi = loadNapiFloor();
  const c = koffi.load(LIBRARY);
  const cIoctlLoop = c.func('double ioctl_fionread_loop(int fd, long n)') as unknown as (fd: number, n: number) => number;
  const cFstatLoop = c.func('double fstat_loop(int fd, long n)') as unknown as (fd: number, n: number) => number;
  const cGetppidLoop = c.func('double getppid_loop(long n)') as unknown as (n: number) => number;
  const FIONREAD = Number((c.func('unsigned long fionread_request()') as unknown as () => number | bigint)());
  let lib: LibraryHandle;
  try {
    lib = koffi.load('libc.so.6');
  } catch {
    lib = koffi.load(null);
  }
  // Same fixed prototype the project uses (src/kernel/linux/syscalls.ts explains why it is call-compatible).
  const ioctl = lib.func('int ioctl(int fd, unsigned long request, void *arg)') as unknown as IoctlFn;
  const ioctlAt = lib.func('int ioctl(int fd, unsigned long request, intptr_t arg)') as unknown as (fd: number, request: number, arg: number) => number;
  const pipe = lib.func('int pipe(void *fds)') as unknown as (fds: Buffer) => number;
  // No arguments at all: koffi's fixed cost per call, without marshalling.
  const getppid = lib.func('int getppid()') as unknown as () => number;
  const fds = Buffer.alloc(8);
  if (pipe(fds) !== 0) throw new Error('pipe failed');
  const rfd = fds.readInt32LE(0);
  const arg = Buffer.alloc(4);
  const fixed = Buffer.allocUnsafeSlow(64);
  const fixedAddress = Number(koffi.address(fixed));

  // The project's wrapper (errno → KernelError, call-site bookkeeping), when its module loads.
  let wrapper: ((fd: number, req: number, a: Buffer) => number) | undefined;
  let argumentArea: ((size: number) => Buffer | undefined) | undefined;
  let wrapperAsync: ((fd: number, req: number, a: Buffer) => Promise<number>) | undefined;
  let wrapperNote = '';
  try {
    const mod = (await import('../src/kernel/linux/syscalls.js')) as unknown as { createLibcSyscalls?: () => Record<string, unknown> };
    const sys = mod.createLibcSyscalls?.();
    const site = { op: 'device_get_info', what: 'FIONREAD' };
    if (sys && typeof sys['ioctlArgument'] === 'function') argumentArea = sys['ioctlArgument'] as (size: number) => Buffer | undefined;
    if (sys && typeof sys['ioctl'] === 'function') {
      const f = sys['ioctl'] as (fd: number, r: number, a: Buffer, s: typeof site) => number;
      wrapper = (fd, r, a) => f(fd, r, a, site);
    }
    if (sys && typeof sys['ioctlAsync'] === 'function') {
      const f = sys['ioctlAsync'] as (fd: number, r: number, a: Buffer, s: typeof site) => Promise<number>;
      wrapperAsync = (fd, r, a) => f(fd, r, a, site);
    }
  } catch (err) {
    wrapperNote = `src/kernel/linux/syscalls.ts not usable: ${(err as Error).message}`;
  }

  const timeSync = (f: () => void, n: number) => {
    const t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) f();
    return Number(process.hrtime.bigint() - t) / n;
  };
  const koffiCall = () => {
    if (ioctl(rfd, FIONREAD, arg) !== 0) throw new Error('ioctl failed');
  };
  const koffiAddressCall = () => {
    if (ioctlAt(rfd, FIONREAD, fixedAddress) !== 0) throw new Error('ioctl failed');
  };
  // As the backend issues a sync ioctl: ask for the argument, then call (src/kernel/linux/ioctl-call.ts).
  const wrapperCall = argumentArea ? () => void wrapper!(rfd, FIONREAD, argumentArea!(4) ?? arg) : () => void wrapper!(rfd, FIONREAD, arg);
  const wrapperFreshCall = () => void wrapper!(rfd, FIONREAD, Buffer.alloc(32));
  const fstatCall = () => void fstatSync(rfd);
  const getppidCall = () => void getppid();
  const napiCall = typeof napi === 'string' ? undefined : () => {
    if (napi.ioctl(rfd, FIONREAD, fixedAddress) !== 0) throw new Error('ioctl failed');
  };
  const napiGetppidCall = typeof napi === 'string' ? undefined : () => void napi.getppid();
  // Warm-up (JIT, koffi's call path, page faults).
  timeSync(koffiCall, 100_000);
  timeSync(koffiAddressCall, 100_000);
  if (napiCall) timeSync(napiCall, 100_000);
  if (napiGetppidCall) timeSync(napiGetppidCall, 100_000);
  if (wrapper) timeSync(wrapperCall, 100_000);
  if (wrapper) timeSync(wrapperFreshCall, 100_000);
  timeSync(fstatCall, 50_000);
  cIoctlLoop(rfd, 100_000);

  const rows: Record<string, number[]> = {
    cIoctl: [],
    koffiIoctl: [],
    koffiIoctlAddress: [],
    wrapperIoctl: [],
    wrapperFreshIoctl: [],
    cGetppid: [],
    koffiGetppid: [],
    napiIoctl: [],
    napiGetppid: [],
    cFstat: [],
    nodeFstatSync: [],
  };
  // Many short rounds, each variant right after its C twin, so a noisy moment hits both.
  for (let r = 0; r < args.rounds; r++) {
    const cIoctl = cIoctlLoop(rfd, args.n);
    if (cIoctl < 0) throw new Error('C ioctl failed');
    rows['cIoctl']!.push(cIoctl);
    rows['koffiIoctl']!.push(timeSync(koffiCall, args.n));
    rows['koffiIoctlAddress']!.push(timeSync(koffiAddressCall, args.n));
    if (napiCall) rows['napiIoctl']!.push(timeSync(napiCall, args.n));
    if (wrapper) rows['wrapperIoctl']!.push(timeSync(wrapperCall, args.n));
    if (wrapper) rows['wrapperFreshIoctl']!.push(timeSync(wrapperFreshCall, Math.floor(args.n / 2)));
    rows['cGetppid']!.push(cGetppidLoop(args.n));
    rows['koffiGetppid']!.push(timeSync(getppidCall, args.n));
    if (napiGetppidCall) rows['napiGetppid']!.push(timeSync(napiGetppidCall, args.n));
    rows['cFstat']!.push(cFstatLoop(rfd, Math.floor(args.n / 2)));
    rows['nodeFstatSync']!.push(timeSync(fstatCall, Math.floor(args.n / 2)));
  }
  // The async form runs the ioctl on a libuv worker: a different cost class, shown for scale.
  let asyncUs: number | undefined;
  if (wrapperAsync) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < args.asyncN; i++) await wrapperAsync(rfd, FIONREAD, arg);
    asyncUs = Number(process.hrtime.bigint() - t) / args.asyncN / 1000;
  }
  const med = Object.fromEntries(Object.entries(rows).map(([k, v]) => [k, v.length ? median(v) : NaN]));
  // Per-round differences, so a noisy round does not mix with a quiet one.
  const minusC = (row: string) => rows[row]!.map((k, i) => k - rows['cIoctl']![i]!);
  const summary = (d: number[]) => {
    if (d.length === 0) return undefined;
    const sorted = [...d].sort((a, b) => a - b);
    return { median: median(d), iqr: [percentile(sorted, 25), percentile(sorted, 75)] as [number, number] };
  };
  const fixedOverhead = rows['koffiGetppid']!.map((k, i) => k - rows['cGetppid']![i]!);
  return {
    n: args.n,
    rounds: args.rounds,
    fionread: FIONREAD,
    nsPerCall: med,
    /** koffi with a (reused) Buffer argument. */
    koffiBufferOverheadNs: summary(minusC('koffiIoctl')),
    koffiAddressOverheadNs: summary(minusC('koffiIoctlAddress')),
    /** The backend's sync path: argument area + the project's wrapper. The target's figure. */
    wrapperOverheadNs: summary(minusC('wrapperIoctl')),
    wrapperFreshOverheadNs: summary(minusC('wrapperFreshIoctl')),
    koffiFixedOverheadNs: median(fixedOverhead),
    /** A hand-written Node-API addon, same ioctl and arguments: the floor for any Node-API FFI. */
    napiOverheadNs: summary(minusC('napiIoctl')),
    napiNote: typeof napi === 'string' ? `Node-API floor not measured: ${napi}` : '',
    asyncWrapperUsPerCall: asyncUs,
    wrapperNote,
    nodeNativeIoctl: 'none: Node has no ioctl binding (fstatSync vs C fstat is shown as a reference for Node-binding cost)',
  };
}

serveParent({
  ffi: (a) => ffi(a as Parameters<typeof ffi>[0]),
  stop: () => setTimeout(() => process.exit(0), 20).unref(),
});
