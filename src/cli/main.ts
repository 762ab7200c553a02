/**
 * The `vfio-broker` command: global help, subcommand dispatch, exit statuses.
 * `run` returns the status instead of exiting so the tests drive it in-process;
 * `main` (called by bin/vfio-broker.js) wires it to the real process.
 */
import { VERSION } from '../version.js';
import { HELP_FLAGS, UsageError, commandHelp, parseCommandArgs, splitCommand } from './args.js';
import { CLIENT_COMMANDS, clientOptions, findClientCommand, runClientCommand, type ClientCommand } from './client-commands.js';
import { processIo, type CliIo } from './io.js';
import { SERVE_DESCRIPTION, SERVE_OPTIONS, serve } from './serve.js';

const PROG = 'vfio-broker';

function clientUsage(c: ClientCommand): string {
  return `${PROG} ${c.name}${c.args.map((a) => ` ${a}`).join('')} [options]`;
}

function clientHelp(c: ClientCommand): string {
  const description = c.description ? `${capitalise(c.summary)}.\n${c.description}` : `${capitalise(c.summary)}.`;
  return commandHelp(clientUsage(c), description, { ...(c.options ?? {}), ...clientOptions() });
}

function capitalise(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

export function globalHelp(): string {
  const rows: [string, string][] = [['serve', 'run the daemon (foreground; logs on stdout)']];
  const groups = new Map<string, [string, string][]>([['Daemon', rows]]);
  for (const c of CLIENT_COMMANDS) {
    const list = groups.get(c.group) ?? [];
    list.push([c.name, c.summary]);
    groups.set(c.group, list);
  }
  const width = Math.max(...[...groups.values()].flat().map(([left]) => left.length));
  const sections = [...groups].map(([title, list]) => `${title}:\n${list.map(([left, help]) => `  ${left.padEnd(width)}  ${help}`).join('\n')}`);
  const common = Object.entries(clientOptions())
    .map(([name, spec]) => `  --${name}${spec.value ? ` ${spec.value}` : ''}`.padEnd(20) + `  ${spec.help}`)
    .join('\n');
  return `Usage: ${PROG} COMMAND [arguments] [options]

Owns iommufd and VFIO device cdevs on this host and serves them over gRPC.

${sections.join('\n\n')}

Options of every command except serve:
${common}

Commands that create an object print "TYPE handle N (kernel id K, ...)"; \`open\`
prints only the context id, so CTX=$(${PROG} open) works. --json prints the
response message as protobuf JSON and is the stable interface for scripts.

Exit status: 0 success, 1 the call failed (daemon error or unreachable),
2 bad usage or a daemon that could not start.
Run '${PROG} COMMAND --help' for a command's arguments and options.
`;
}

const VALUE_OPTIONS = new Set<string>([
  ...Object.entries(SERVE_OPTIONS).filter(([, s]) => s.type === 'string').map(([n]) => n),
  ...Object.entries(clientOptions()).filter(([, s]) => s.type === 'string').map(([n]) => n),
  ...CLIENT_COMMANDS.flatMap((c) => Object.entries(c.options ?? {}).filter(([, s]) => s.type === 'string').map(([n]) => n)),
]);

/** Runs one command line (without the node and script arguments) and returns the exit status. */
export async function run(argv: readonly string[], io: CliIo = processIo()): Promise<number> {
  const { command, rest } = splitCommand(argv, (option) => VALUE_OPTIONS.has(option));
  const wantsHelp = rest.some((a) => HELP_FLAGS.includes(a));
  let label = PROG;
  try {
    if (command === undefined) {
      if (argv.includes('--version')) {
        io.stdout(`${PROG} ${VERSION}\n`);
        return 0;
      }
      if (wantsHelp) {
        io.stdout(globalHelp());
        return 0;
      }
      if (rest.length > 0) throw new UsageError(`unknown option ${rest[0]} (expected a command; see '${PROG} --help')`);
      throw new UsageError(`missing COMMAND (see '${PROG} --help')`);
    }
    if (command === 'help') {
      const topic = rest[0];
      if (topic === undefined) io.stdout(globalHelp());
      else if (topic === 'serve') io.stdout(commandHelp(`${PROG} serve [options]`, SERVE_DESCRIPTION, SERVE_OPTIONS));
      else {
        const c = findClientCommand(topic);
        if (!c) throw new UsageError(`unknown command '${topic}' (see '${PROG} --help')`);
        io.stdout(clientHelp(c));
      }
      return 0;
    }
    label = `${PROG} ${command}`;
    if (command === 'serve') {
      if (wantsHelp) {
        io.stdout(commandHelp(`${PROG} serve [options]`, SERVE_DESCRIPTION, SERVE_OPTIONS));
        return 0;
      }
      return await serve(parseCommandArgs(rest, [], SERVE_OPTIONS), io);
    }
    const client = findClientCommand(command);
    if (!client) {
      label = PROG;
      throw new UsageError(`unknown command '${command}' (see '${PROG} --help')`);
    }
    if (wantsHelp) {
      io.stdout(clientHelp(client));
      return 0;
    }
    const parsed = parseCommandArgs(rest, client.args, { ...(client.options ?? {}), ...clientOptions() });
    return await runClientCommand(client, parsed, io);
  } catch (err) {
    if (err instanceof UsageError) {
      const c = command === undefined ? undefined : findClientCommand(command);
      const usage = c ? ` (usage: ${clientUsage(c)})` : '';
      io.stderr(`${label}: ${err.message}${usage}\n`);
      return 2;
    }
    io.stderr(`${label}: error: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

/** The process entry point: runs argv and exits with its status. */
export async function main(): Promise<void> {
  const code = await run(process.argv.slice(2));
  // Let piped output drain before exiting.
  process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
}
