/**
 * Argument parsing on top of node:util parseArgs: per-command option specs
 * (which also drive --help), positional checks, and the value parsers that
 * reject bad input before the daemon is contacted.
 */
import { parseArgs } from 'node:util';
import { validTenantName } from '../rpc/identity.js';

/** Bad usage: printed as one line, exit status 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** Placeholder shown in help, e.g. `SECONDS`. */
  value?: string;
  help: string;
}

export type OptionSpecs = Record<string, OptionSpec>;

export interface ParsedArgs {
  /** Positional arguments by their help name (e.g. `CTX`). */
  args: Record<string, string>;
  values: Record<string, string | boolean | undefined>;
}

export const HELP_FLAGS = ['--help', '-h'];

function parseArgsMessage(err: unknown): string {
  const e = err as { code?: string; message?: string };
  const message = e.message ?? String(err);
  const quoted = /'([^']+)'/.exec(message)?.[1];
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${quoted ?? message}`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE': {
      const name = quoted?.replace(/ <value>$/, '');
      if (name && message.includes('argument missing')) return `option ${name} needs a value`;
      if (name && message.includes('ambiguous')) return `option ${name} needs a value (for one starting with '-', write ${name}=VALUE)`;
      return firstLine(message);
    }
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `unexpected argument ${quoted ?? ''}`.trim();
    default:
      return firstLine(message);
  }
}

function firstLine(message: string): string {
  return (message.split('\n')[0] ?? message).replace(/\.$/, '');
}

/**
 * Parses one command's arguments. `positionals` are the required positional
 * names in order; a missing or extra one is a UsageError naming it.
 */
export function parseCommandArgs(argv: readonly string[], positionals: readonly string[], options: OptionSpecs): ParsedArgs {
  const config: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const [name, spec] of Object.entries(options)) config[name] = spec.short ? { type: spec.type, short: spec.short } : { type: spec.type };
  let parsed: { values: Record<string, string | boolean | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({ args: [...argv], options: config, allowPositionals: true, strict: true }) as typeof parsed;
  } catch (err) {
    throw new UsageError(parseArgsMessage(err));
  }
  const missing = positionals.slice(parsed.positionals.length);
  if (missing.length > 0) throw new UsageError(`missing ${missing.join(' ')}`);
  const extra = parsed.positionals.slice(positionals.length);
  if (extra.length > 0) throw new UsageError(`unexpected argument '${extra[0]}'`);
  const args: Record<string, string> = {};
  positionals.forEach((name, i) => (args[name] = parsed.positionals[i] ?? ''));
  return { args, values: parsed.values };
}

/**
 * Splits `[global options] COMMAND [args]` so options may come before the
 * command: skips leading options, and the value of a leading option that
 * takes one.
 */
export function splitCommand(argv: readonly string[], takesValue: (option: string) => boolean): { command: string | undefined; rest: string[] } {
  let i = 0;
  while (i < argv.length) {
    const token = argv[i] ?? '';
    if (token === '--') {
      i += 1;
      break;
    }
    if (!token.startsWith('-') || token === '-') break;
    if (token.startsWith('--') && !token.includes('=') && takesValue(token.slice(2))) i += 1;
    i += 1;
  }
  const command = argv[i];
  return { command, rest: [...argv.slice(0, i).filter((t) => t !== '--'), ...argv.slice(i + 1)] };
}

export function stringValue(p: ParsedArgs, name: string): string | undefined {
  const v = p.values[name];
  return typeof v === 'string' ? v : undefined;
}

/** A required positional; empty text is refused. */
export function positional(p: ParsedArgs, name: string): string {
  const value = p.args[name] ?? '';
  if (value === '') throw new UsageError(`${name} must not be empty`);
  return value;
}

export function tenantName(value: string, what: string): string {
  if (!validTenantName(value)) throw new UsageError(`${what}: '${value}' is not a tenant name (lowercase letters, digits, . _ -; at most 63)`);
  return value;
}

export function flag(p: ParsedArgs, name: string): boolean {
  return p.values[name] === true;
}

const UINT_RE = /^(?:0x[0-9a-f]+|[0-9]+)$/i;

/** A non-negative integer in decimal or 0x hex, at most `max`. */
export function parseUint(text: string, what: string, max: bigint): bigint {
  if (!UINT_RE.test(text)) throw new UsageError(`${what}: '${text}' is not a number (decimal or 0x hex)`);
  const n = BigInt(text.toLowerCase());
  if (n > max) throw new UsageError(`${what}: ${text} is out of range (at most ${max})`);
  return n;
}

export const UINT32_MAX = 0xffff_ffffn;
export const UINT64_MAX = 0xffff_ffff_ffff_ffffn;

/** An object handle: a positive decimal integer, as the broker printed it. */
export function parseHandle(text: string, what: string): bigint {
  if (!/^[0-9]+$/.test(text)) throw new UsageError(`${what}: '${text}' is not a handle (a positive integer such as 3)`);
  const n = BigInt(text);
  if (n === 0n) throw new UsageError(`${what}: handles start at 1`);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new UsageError(`${what}: ${text} is too large to be a handle`);
  return n;
}

/** Seconds: a positive number (fractions allowed unless `integer`). */
export function parseSeconds(text: string, what: string, options: { integer?: boolean; allowZero?: boolean } = {}): number {
  const n = options.integer ? (/^[0-9]+$/.test(text) ? Number(text) : NaN) : /^[0-9]+(\.[0-9]+)?$/.test(text) ? Number(text) : NaN;
  if (!Number.isFinite(n)) throw new UsageError(`${what}: '${text}' is not ${options.integer ? 'a whole number of seconds' : 'a number of seconds'}`);
  if (n === 0 && !options.allowZero) throw new UsageError(`${what}: must be greater than 0`);
  if (n > UINT32_MAX_NUMBER) throw new UsageError(`${what}: ${text} is out of range`);
  return n;
}
const UINT32_MAX_NUMBER = 0xffff_ffff;

/** Hex bytes, e.g. `0a1b2c` or `0x0a1b2c`; `:` and `_` separators are allowed. */
export function parseHex(text: string, what: string): Uint8Array {
  const digits = text.replace(/^0x/i, '').replace(/[:_]/g, '');
  if (!/^(?:[0-9a-f]{2})*$/i.test(digits)) throw new UsageError(`${what}: '${text}' is not hex bytes (an even number of hex digits)`);
  return Uint8Array.from(Buffer.from(digits, 'hex'));
}

/** One of a fixed set of words. */
export function parseChoice<T>(text: string, what: string, choices: Readonly<Record<string, T>>): T {
  const value = Object.hasOwn(choices, text) ? choices[text] : undefined;
  if (value === undefined) throw new UsageError(`${what}: '${text}' is not one of ${Object.keys(choices).join(', ')}`);
  return value;
}

/** Help text for a command: usage line, description, options. */
export function commandHelp(usage: string, description: string, options: OptionSpecs): string {
  const rows = Object.entries(options).map(([name, spec]) => {
    const short = spec.short ? `-${spec.short}, ` : '    ';
    return [`  ${short}--${name}${spec.value ? ` ${spec.value}` : ''}`, spec.help];
  });
  rows.push(['  -h, --help', 'show this help']);
  const width = Math.max(...rows.map(([left]) => (left ?? '').length));
  const lines = rows.map(([left, help]) => `${(left ?? '').padEnd(width)}  ${help}`);
  return `Usage: ${usage}\n\n${description.trim()}\n\nOptions:\n${lines.join('\n')}\n`;
}
