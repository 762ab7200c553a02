/** The API module stays lint-clean, and src/gen is exactly what buf generates from it. */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.resolve(import.meta.dirname, '..');
const buf = path.join(root, 'node_modules', '.bin', 'buf');

function files(dir: string, base = dir): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    return statSync(full).isDirectory() ? files(full, base) : [path.relative(base, full)];
  });
}

describe('proto/ buf module', () => {
  it('passes buf lint (STANDARD)', () => {
    expect(() => execFileSync(buf, ['lint'], { cwd: root, stdio: 'pipe' })).not.toThrow();
  });

  it('has committed generated code identical to a fresh buf generate', () => {
    const scratch = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-gen-'));
    try {
      for (const f of ['buf.yaml', 'buf.gen.yaml']) cpSync(path.join(root, f), path.join(scratch, f));
      cpSync(path.join(root, 'proto'), path.join(scratch, 'proto'), { recursive: true });
      execFileSync(buf, ['generate'], { cwd: scratch, stdio: 'pipe', env: { ...process.env, PATH: `${path.join(root, 'node_modules', '.bin')}:${process.env['PATH']}` } });
      const fresh = path.join(scratch, 'src', 'gen');
      const committed = path.join(root, 'src', 'gen');
      expect(files(committed).sort()).toEqual(files(fresh).sort());
      for (const f of files(fresh)) {
        expect(readFileSync(path.join(committed, f), 'utf8'), `src/gen/${f} is stale: run npm run generate`).toBe(readFileSync(path.join(fresh, f), 'utf8'));
      }
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
  });
});
