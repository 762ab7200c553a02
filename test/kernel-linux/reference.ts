/**
 * Parsers for the compiled uAPI reference (reference/ beside this file, from
 * the Linux 7.2 headers), so the tests compare against the C compiler's
 * output and nothing is written down twice. VFIO_BROKER_UAPI_REF overrides
 * the directory (the real-kernel lane points it at freshly compiled output).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const REFERENCE_DIR =
  process.env['VFIO_BROKER_UAPI_REF'] ?? fileURLToPath(new URL('./reference/', import.meta.url));

export function readReference(file: string): string {
  try {
    return readFileSync(`${REFERENCE_DIR.replace(/\/+$/, '')}/${file}`, 'utf8');
  } catch (err) {
    throw new Error(`uAPI reference ${file} not found in ${REFERENCE_DIR} (set VFIO_BROKER_UAPI_REF): ${(err as Error).message}`);
  }
}

export interface RefField {
  offset: number;
  /** Absent for flexible array members (`data off=8`). */
  size: number | undefined;
}

export interface RefStruct {
  size: number;
  align: number;
  fields: Map<string, RefField>;
}

export interface Layouts {
  ioctls: Map<string, number>;
  structs: Map<string, RefStruct>;
}

/** struct-layout-x86_64.txt: `NAME = 0x... (dec)` lines, then `name size=N align=M` blocks of fields. */
export function parseLayout(text: string): Layouts {
  const ioctls = new Map<string, number>();
  const structs = new Map<string, RefStruct>();
  let current: RefStruct | undefined;
  for (const line of text.split('\n')) {
    const ioctl = /^(\w+)\s+= 0x([0-9a-f]+) \((\d+)\)$/.exec(line);
    if (ioctl) {
      const hex = Number.parseInt(ioctl[2]!, 16);
      if (hex !== Number(ioctl[3])) throw new Error(`reference disagrees with itself: ${line}`);
      ioctls.set(ioctl[1]!, hex);
      continue;
    }
    const struct = /^(\w+) size=(\d+) align=(\d+)$/.exec(line);
    if (struct) {
      current = { size: Number(struct[2]), align: Number(struct[3]), fields: new Map() };
      structs.set(struct[1]!, current);
      continue;
    }
    const field = /^\s+(\S+)\s+off=\s*(\d+)(?: size=(\d+))?$/.exec(line);
    if (field && current) {
      current.fields.set(field[1]!, { offset: Number(field[2]), size: field[3] === undefined ? undefined : Number(field[3]) });
    }
  }
  return { ioctls, structs };
}

/** struct-minsz.txt: `IOCTL min=N full=M`. */
export function parseMinsz(text: string): Map<string, { min: number; full: number }> {
  const out = new Map<string, { min: number; full: number }>();
  for (const line of text.split('\n')) {
    const m = /^(\w+)\s+min=\s*(\d+) full=\s*(\d+)$/.exec(line);
    if (m) out.set(m[1]!, { min: Number(m[2]), full: Number(m[3]) });
  }
  return out;
}

/** kernel-uapi.md §1.2/§1.3 tables: `| NAME ... | 0x3B80 | 15232 |` rows (covers ioctls the layout file omits). */
export function parseUapiTables(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    const name = /^(IOMMU_\w+|VFIO_\w+)/.exec(cells[1] ?? '')?.[1];
    const hexCell = cells.find((c) => /^0x3B[0-9A-F]{2}$/i.test(c));
    if (name === undefined || hexCell === undefined) continue;
    const hex = Number.parseInt(hexCell, 16);
    const dec = cells[cells.indexOf(hexCell) + 1];
    if (dec !== undefined && /^\d+$/.test(dec) && Number(dec) !== hex) throw new Error(`kernel-uapi.md row disagrees: ${line}`);
    out.set(name, hex);
  }
  return out;
}
