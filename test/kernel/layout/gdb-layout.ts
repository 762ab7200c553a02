/**
 * The other direction of the layout check: what the C struct has that the
 * TS codec does not. offsetof can only answer for names TS already knows, so
 * the member list comes from the compiler's DWARF, read with gdb's
 * `ptype /o struct NAME` (offsets, sizes, bitfields, holes and padding).
 *
 * Rule: every byte that belongs to a C member must be covered by some TS
 * field. Bytes no member owns (holes, tail padding) need no TS field. A C
 * member TS does not name is fine when its bytes are covered by other TS
 * fields: union siblings of a modelled member (iommu_test_cmd's union is one
 * `dirty` byte range in TS, so `add_reserved.start` & co. are covered).
 */

export interface CMember {
  /** Designator from the outer struct: `mock_domain.out_stdev_id`; anonymous aggregates add nothing. */
  path: string;
  /** Bit range in the struct. */
  bitStart: number;
  bitEnd: number;
  bitfield: boolean;
  /** Directly inside a union (at any depth), i.e. shares its bytes with siblings. */
  inUnion: boolean;
}

export interface GdbStruct {
  name: string;
  size: number;
  members: CMember[];
}

interface Frame {
  kind: 'struct' | 'union';
  /** Byte offset of the aggregate in the outer struct. */
  offset: number;
  /** Members recorded inside it (at any depth): renamed when its closing line names it. */
  members: CMember[];
}

const LEAF_WITH_OFFSET = /^\/\*\s+(\d+)(?::\s*(\d+))?\s+\|\s+(\d+)\s+\*\/\s+(.*);$/;
const LEAF_SIZE_ONLY = /^\/\*\s+(\d+)\s+\*\/\s+(.*);$/;
const OPEN_WITH_OFFSET = /^\/\*\s+(\d+)\s+\|\s+(\d+)\s+\*\/\s+(struct|union)\b[^{]*\{$/;
const OPEN_SIZE_ONLY = /^\/\*\s+(\d+)\s+\*\/\s+(struct|union)\b[^{]*\{$/;
const CLOSE = /^\}\s*([A-Za-z_][A-Za-z0-9_]*)?(\s*\[\d+\])*\s*;?$/;
const HEADER = /type = struct ([A-Za-z_][A-Za-z0-9_]*) \{$/;
const TOTAL = /total size \(bytes\):\s+(\d+)/;

/** Member name and bitfield width from a declaration such as `__u8 __reserved[3]` or `unsigned int b : 3`. */
function declName(decl: string): { name: string; width: number | undefined } {
  const bf = /^(.*?)\s*:\s*(\d+)$/.exec(decl);
  const base = (bf ? bf[1]! : decl).replace(/(\s*\[\d*\])+$/, '');
  const name = /([A-Za-z_][A-Za-z0-9_]*)$/.exec(base)?.[1];
  if (name === undefined) throw new Error(`gdb ptype: cannot find the member name in "${decl}"`);
  return { name, width: bf ? Number(bf[2]) : undefined };
}

/** Parses the output of one or more `ptype /o struct X` commands. */
export function parsePtype(text: string): Map<string, GdbStruct> {
  const out = new Map<string, GdbStruct>();
  let current: GdbStruct | undefined;
  const stack: Frame[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    const header = HEADER.exec(line);
    if (header) {
      current = { name: header[1]!, size: -1, members: [] };
      out.set(current.name, current);
      stack.length = 0;
      stack.push({ kind: 'struct', offset: 0, members: [] });
      continue;
    }
    if (!current) continue;
    const top = stack[stack.length - 1];
    const total = TOTAL.exec(line);
    if (total) {
      if (stack.length === 1) current.size = Number(total[1]);
      continue;
    }
    if (line.startsWith('/* XXX')) continue; // hole or padding
    let m = OPEN_WITH_OFFSET.exec(line);
    if (m) {
      stack.push({ kind: m[3] as Frame['kind'], offset: Number(m[1]), members: [] });
      continue;
    }
    m = OPEN_SIZE_ONLY.exec(line);
    if (m) {
      // Inside a union gdb prints no offset: the member starts where the union does.
      stack.push({ kind: m[2] as Frame['kind'], offset: top?.offset ?? 0, members: [] });
      continue;
    }
    m = CLOSE.exec(line);
    if (m) {
      const frame = stack.pop();
      if (!frame) throw new Error(`gdb ptype: unbalanced "${line}"`);
      if (stack.length === 0) {
        current = undefined;
        continue;
      }
      // Now we know the aggregate's name (none for an anonymous union): prefix its members.
      const name = m[1];
      if (name !== undefined) for (const mem of frame.members) mem.path = `${name}.${mem.path}`;
      stack[stack.length - 1]!.members.push(...frame.members);
      continue;
    }
    m = LEAF_WITH_OFFSET.exec(line);
    if (m) {
      const { name, width } = declName(m[4]!);
      const off = Number(m[1]);
      const bit = m[2] !== undefined ? Number(m[2]) : 0;
      const size = Number(m[3]);
      const bitStart = off * 8 + bit;
      const mem: CMember = {
        path: name,
        bitStart,
        bitEnd: width !== undefined ? bitStart + width : bitStart + size * 8,
        bitfield: width !== undefined,
        inUnion: stack.some((f) => f.kind === 'union'),
      };
      current.members.push(mem);
      top?.members.push(mem);
      continue;
    }
    m = LEAF_SIZE_ONLY.exec(line);
    if (m) {
      const { name, width } = declName(m[2]!);
      const off = top?.offset ?? 0;
      const size = Number(m[1]);
      const mem: CMember = { path: name, bitStart: off * 8, bitEnd: off * 8 + (width ?? size * 8), bitfield: width !== undefined, inUnion: true };
      current.members.push(mem);
      top?.members.push(mem);
      continue;
    }
    throw new Error(`gdb ptype: unrecognised line ${JSON.stringify(raw)}`);
  }
  return out;
}

export interface CoverageResult {
  differences: string[];
  /** C leaf members, those TS names, those covered through union siblings, bytes no member owns. */
  counts: { members: number; named: number; coveredBySiblings: number; paddingBytes: number };
  coveredBySiblings: string[];
}

/** Applies the module's rule to one struct. `ts` are the codec's fields. */
export function coverage(name: string, c: GdbStruct, ts: Readonly<Record<string, { offset: number; size: number }>>): CoverageResult {
  const differences: string[] = [];
  const covered = new Uint8Array(c.size);
  for (const f of Object.values(ts)) for (let i = f.offset; i < Math.min(c.size, f.offset + f.size); i++) covered[i] = 1;
  const owned = new Uint8Array(c.size);
  let named = 0;
  const bySiblings: string[] = [];
  for (const mem of c.members) {
    const first = Math.floor(mem.bitStart / 8);
    const end = Math.ceil(mem.bitEnd / 8);
    for (let i = first; i < end && i < c.size; i++) owned[i] = 1;
    const missing: number[] = [];
    for (let i = first; i < end; i++) if (covered[i] !== 1) missing.push(i);
    if (missing.length > 0) {
      differences.push(
        `${name}.${mem.path} (bytes ${first}..${end - 1}${mem.bitfield ? `, bits ${mem.bitStart}..${mem.bitEnd - 1}` : ''}) is in the C struct but ` +
          `bytes ${missing.join(',')} are covered by no TS field`,
      );
    }
    if (Object.prototype.hasOwnProperty.call(ts, mem.path)) named++;
    else if (missing.length === 0) bySiblings.push(mem.path);
  }
  let padding = 0;
  for (let i = 0; i < c.size; i++) if (owned[i] !== 1) padding++;
  return { differences, counts: { members: c.members.length, named, coveredBySiblings: bySiblings.length, paddingBytes: padding }, coveredBySiblings: bySiblings };
}
