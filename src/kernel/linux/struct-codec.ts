/**
 * Table-driven codec for the extensible uAPI structs (kernel-uapi.md §0, §2).
 *
 * A struct is described once, as a table of field name → offset, size and
 * kind, with the names the C compiler uses (union members as `member.field`),
 * so test/kernel-linux/layout.test.ts can compare every field with
 * struct-layout-x86_64.txt. Encoding follows §2's extensible-struct rules:
 * - the buffer is always the full 7.2 size and starts zeroed, so output
 *   fields past an older kernel's struct read back as 0 (§2 step 6);
 * - the header (`size`/`argsz`) says how much the running kernel should
 *   read, chosen per kernel release (`sizeFor`);
 * - a non-zero value past that size is refused here instead of being sent,
 *   because an older kernel would answer E2BIG or silently ignore it.
 */
import { endianness } from 'node:os';
import { versionAtLeast, type KernelVersion } from './version.js';

/** Host byte order: every field is host order except `__aligned_le64` payloads (§0). */
const LITTLE_ENDIAN = endianness() === 'LE';

export type FieldKind = 'u8' | 'u16' | 'u32' | 's32' | 'u64' | 'bytes';

export interface FieldSpec {
  readonly offset: number;
  readonly size: number;
  readonly kind: FieldKind;
}

export type Layout = Readonly<Record<string, FieldSpec>>;

type ValueOf<S extends FieldSpec> = S['kind'] extends 'u64' ? bigint : S['kind'] extends 'bytes' ? Uint8Array : number;

/** Decoded struct: every field of the layout. */
export type StructValues<L extends Layout> = { -readonly [K in keyof L]: ValueOf<L[K]> };
/** Encoder input: any subset; absent fields are zero. */
export type StructInput<L extends Layout> = Partial<StructValues<L>>;

/** One step of a struct's growth: from `since` on, the kernel's sizeof is `size`. */
export type SizeStep = readonly [major: number, minor: number, size: number];

export interface StructSpec<L extends Layout> {
  /** C struct name, as in struct-layout-x86_64.txt. */
  readonly name: string;
  /** The ioctl that carries it, as in struct-minsz.txt (undefined for payload structs). */
  readonly ioctl: string | undefined;
  /** The leading u32 that tells the kernel the size (`size` on iommufd, `argsz` on VFIO). */
  readonly header: (keyof L & string) | undefined;
  /** Smallest size the kernel accepts (offsetofend of the first version's last field). */
  readonly min: number;
  /** sizeof in the 7.2 headers. */
  readonly full: number;
  /** Growth history (§3, §5.1), oldest first; the last entry's size is `full`. */
  readonly sizes: readonly SizeStep[];
  readonly fields: L;
}

/** A value that the chosen struct size cannot carry, or that does not fit its field. */
export class StructEncodeError extends Error {
  override readonly name = 'StructEncodeError';
  constructor(
    message: string,
    /** `too-new`: the field lies past the size this kernel takes (it would answer E2BIG); `range`: bad value. */
    readonly reason: 'too-new' | 'range' = 'range',
  ) {
    super(message);
  }
}

export class StructCodec<L extends Layout> {
  readonly name: string;
  readonly ioctl: string | undefined;
  readonly min: number;
  readonly full: number;
  readonly fields: L;

  constructor(readonly spec: StructSpec<L>) {
    this.name = spec.name;
    this.ioctl = spec.ioctl;
    this.min = spec.min;
    this.full = spec.full;
    this.fields = spec.fields;
    for (const [field, f] of Object.entries(spec.fields)) {
      if (f.offset + f.size > spec.full) throw new Error(`${spec.name}.${field} ends past sizeof ${spec.full}`);
    }
  }

  /**
   * The size to declare to a kernel of `version`: the struct as that kernel
   * knows it, so nothing past its end is ever scanned (§2 step 5). Undefined
   * when the kernel predates the struct.
   */
  sizeFor(version: KernelVersion): number | undefined {
    let size: number | undefined;
    for (const [major, minor, s] of this.spec.sizes) if (versionAtLeast(version, [major, minor])) size = s;
    return size;
  }

  /**
   * A zeroed buffer of the full size with `values` written and the header set
   * to `size`. `into`, when given, is that zeroed buffer (exactly the full size).
   */
  encode(values: StructInput<L>, size: number = this.full, into?: Buffer): Buffer {
    if (size < this.min || size > this.full) {
      throw new StructEncodeError(`${this.name}: size ${size} outside ${this.min}..${this.full}`);
    }
    if (into !== undefined && into.length !== this.full) throw new Error(`${this.name}: encode into ${into.length} bytes, not ${this.full}`);
    const buf = into ?? Buffer.alloc(this.full);
    // Bytes set so far: union members may be given together only if they agree.
    const written = new Uint8Array(this.full);
    for (const [field, value] of Object.entries(values) as [string, unknown][]) {
      if (value === undefined) continue;
      const f = this.fields[field];
      if (f === undefined) throw new StructEncodeError(`${this.name} has no field ${field}`);
      const bytes = Buffer.alloc(f.size);
      writeField(bytes, { ...f, offset: 0 }, value, `${this.name}.${field}`);
      // The buffer starts zeroed, so a zero value writes nothing (and cannot clobber a union sibling).
      if (bytes.every((b) => b === 0)) continue;
      if (f.offset + f.size > size) {
        throw new StructEncodeError(
          `${this.name}.${field} needs a ${f.offset + f.size}-byte struct; this kernel takes ${size}`,
          'too-new',
        );
      }
      for (let i = 0; i < f.size; i++) {
        const at = f.offset + i;
        if (written[at] === 1 && buf[at] !== bytes[i]) {
          throw new StructEncodeError(`${this.name}.${field} conflicts with another member of its union`);
        }
        buf[at] = bytes[i]!;
        written[at] = 1;
      }
    }
    if (this.spec.header !== undefined) {
      const h = this.fields[this.spec.header];
      if (h !== undefined) writeField(buf, h, size, this.spec.header);
    }
    return buf;
  }

  /** Every field; fields past the end of a short buffer read as zero. */
  decode(buf: Uint8Array): StructValues<L> {
    const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
    const out: Record<string, number | bigint | Uint8Array> = {};
    for (const [field, f] of Object.entries(this.fields)) out[field] = readField(b, f);
    return out as StructValues<L>;
  }
}

export function defineStruct<const L extends Layout>(spec: StructSpec<L>): StructCodec<L> {
  return new StructCodec(spec);
}

const RANGES: Record<Exclude<FieldKind, 'u64' | 'bytes'>, readonly [number, number]> = {
  u8: [0, 0xff],
  u16: [0, 0xffff],
  u32: [0, 0xffff_ffff],
  s32: [-0x8000_0000, 0x7fff_ffff],
};

function writeField(buf: Buffer, f: FieldSpec, value: unknown, what: string): void {
  switch (f.kind) {
    case 'u64': {
      if (typeof value !== 'bigint' || value < 0n || value > 0xffff_ffff_ffff_ffffn) {
        throw new StructEncodeError(`${what}: ${String(value)} is not a u64 bigint`);
      }
      if (LITTLE_ENDIAN) buf.writeBigUInt64LE(value, f.offset);
      else buf.writeBigUInt64BE(value, f.offset);
      return;
    }
    case 'bytes': {
      if (!(value instanceof Uint8Array) || value.length > f.size) {
        throw new StructEncodeError(`${what}: expected at most ${f.size} bytes`);
      }
      buf.set(value, f.offset);
      return;
    }
    default: {
      const [lo, hi] = RANGES[f.kind];
      if (typeof value !== 'number' || !Number.isInteger(value) || value < lo || value > hi) {
        throw new StructEncodeError(`${what}: ${String(value)} does not fit ${f.kind}`);
      }
      writeInt(buf, f, value);
    }
  }
}

function writeInt(buf: Buffer, f: FieldSpec, value: number): void {
  switch (f.kind) {
    case 'u8':
      buf.writeUInt8(value, f.offset);
      return;
    case 'u16':
      if (LITTLE_ENDIAN) buf.writeUInt16LE(value, f.offset);
      else buf.writeUInt16BE(value, f.offset);
      return;
    case 's32':
      if (LITTLE_ENDIAN) buf.writeInt32LE(value, f.offset);
      else buf.writeInt32BE(value, f.offset);
      return;
    default:
      if (LITTLE_ENDIAN) buf.writeUInt32LE(value, f.offset);
      else buf.writeUInt32BE(value, f.offset);
  }
}

function readField(buf: Buffer, f: FieldSpec): number | bigint | Uint8Array {
  const fits = f.offset + f.size <= buf.length;
  switch (f.kind) {
    case 'u64':
      if (!fits) return 0n;
      return LITTLE_ENDIAN ? buf.readBigUInt64LE(f.offset) : buf.readBigUInt64BE(f.offset);
    case 'bytes': {
      const out = new Uint8Array(f.size);
      if (f.offset < buf.length) out.set(buf.subarray(f.offset, Math.min(buf.length, f.offset + f.size)));
      return out;
    }
    case 'u8':
      return fits ? buf.readUInt8(f.offset) : 0;
    case 'u16':
      if (!fits) return 0;
      return LITTLE_ENDIAN ? buf.readUInt16LE(f.offset) : buf.readUInt16BE(f.offset);
    case 's32':
      if (!fits) return 0;
      return LITTLE_ENDIAN ? buf.readInt32LE(f.offset) : buf.readInt32BE(f.offset);
    case 'u32':
      if (!fits) return 0;
      return LITTLE_ENDIAN ? buf.readUInt32LE(f.offset) : buf.readUInt32BE(f.offset);
  }
}
