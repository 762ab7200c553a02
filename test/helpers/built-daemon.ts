/**
 * The daemon as a separate process, for tests that must kill it (SIGKILL)
 * or watch it exit. Compiles src/ into .cache/test-dist once per test file,
 * so the process runs exactly the code under test (not a stale dist/).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

const root = path.resolve(import.meta.dirname, '../..');
const outDir = path.join(root, '.cache', 'test-dist');

export function buildForChildProcess(): string {
  execFileSync(path.join(root, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.build.json', '--outDir', outDir], { cwd: root, stdio: 'pipe' });
  return path.join(outDir, 'cli', 'main.js');
}

/** Starts `vfio-broker ARGS…`; resolves once the socket answers (the caller polls). */
export function spawnCli(mainJs: string, args: string[], env: NodeJS.ProcessEnv = {}, as?: { uid: number; gid: number }): ChildProcess {
  const script = `import(${JSON.stringify(mainJs)}).then((m) => m.main())`;
  return spawn(process.execPath, ['--input-type=module', '-e', script, '--', 'vfio-broker', ...args], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(as ?? {}),
  });
}

/** Runs a CLI command to completion, optionally as another user (a separate client process). */
export async function runCli(mainJs: string, args: string[], as?: { uid: number; gid: number }): Promise<{ code: number; out: string; err: string }> {
  const child = spawnCli(mainJs, args, {}, as);
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  const code = await new Promise<number>((resolve) => child.once('exit', (c) => resolve(c ?? -1)));
  return { code, out, err };
}
