/**
 * memfd_create(2) through koffi. Node has no binding for it; the sim backs
 * each device file with a memfd so a VMM can be handed a real fd, and tests
 * make guest memory with it.
 */
import koffi, { type LibraryHandle } from 'koffi';
import { closeSync, ftruncateSync } from 'node:fs';

/** MFD_CLOEXEC: a child process never inherits the broker's files. */
const MFD_CLOEXEC = 1;

type MemfdCreate = (name: string, flags: number) => number;
let memfdCreate: MemfdCreate | undefined;

function bind(): MemfdCreate {
  if (memfdCreate) return memfdCreate;
  let lib: LibraryHandle;
  try {
    lib = koffi.load('libc.so.6');
  } catch {
    lib = koffi.load(null); // musl: the symbol is already in the process
  }
  memfdCreate = lib.func('int memfd_create(const char *name, unsigned int flags)') as MemfdCreate;
  return memfdCreate;
}

/**
 * A new anonymous shmem file of `size` bytes; /proc/self/fd/N reads
 * `/memfd:NAME (deleted)`. The caller owns the fd and closes it.
 */
export function createMemfd(name: string, size = 0): number {
  const fd = bind()(name, MFD_CLOEXEC);
  if (fd < 0) throw new Error(`memfd_create(${name}) failed: errno ${koffi.errno()}`);
  if (size > 0) {
    try {
      ftruncateSync(fd, size);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }
  return fd;
}
