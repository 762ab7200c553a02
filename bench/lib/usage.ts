/**
 * The bench scripts take their settings from the environment. `--help` prints
 * them; any other argument is refused by name rather than silently starting a
 * run of several minutes.
 */
export function handleArgs(usage: string, args: readonly string[] = process.argv.slice(2)): void {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(usage);
    process.exit(0);
  }
  if (args.length > 0) {
    process.stderr.write(`unknown argument ${JSON.stringify(args[0])}: settings come from environment variables\n\n${usage}`);
    process.exit(2);
  }
}
