/**
 * Signals that arrive while the CLI is still loading, before a command has
 * handlers of its own (loading takes most of a second on a busy machine): a
 * CI job's timeout or an operator's Ctrl-C then killed the process with no
 * result document, no `end` event, and the default exit code (143 for
 * SIGTERM). `bin/migrate.js` holds them from its first line; the command's own
 * handlers take them over, once, as if they had just arrived.
 */
export const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

const held: NodeJS.Signals[] = [];
const hold = (signal: NodeJS.Signals) => held.push(signal);
let holding = false;

export function holdSignals(): void {
  if (holding) return;
  holding = true;
  for (const signal of STOP_SIGNALS) process.on(signal, hold);
}

/** Stops holding (the default behaviour returns once the caller's handlers are gone) and returns what was held. */
export function takeHeldSignals(): NodeJS.Signals[] {
  if (holding) for (const signal of STOP_SIGNALS) process.off(signal, hold);
  holding = false;
  return held.splice(0);
}
