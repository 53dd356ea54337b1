import { createInterface } from 'node:readline/promises';
import { InterruptedError, UsageError } from '../errors.js';
import type { CommandContext } from './context.js';

/**
 * DESIGN §4: a command that changes what applications see, or deletes, asks on
 * a terminal and needs `--yes` off one. Off a terminal (or with `CI` set) this
 * throws `confirmation_required` (exit 2) saying `what` it would do; on one it
 * returns the question to ask once the command knows what it will do.
 */
export function confirmationPrompt(ctx: CommandContext, what: string, hint: string): (question: string, expected: string) => Promise<boolean> {
  if (!ctx.interactive) {
    const why = ctx.io.stdinIsTTY && ctx.io.stderrIsTTY ? 'CI is set, so it asks nothing' : 'there is no terminal to ask on';
    throw new UsageError('confirmation_required', `${what} and needs confirmation; ${why}.`, { hint });
  }
  return (question, expected) => ask(question, expected, ctx.command);
}

/**
 * Whether the operator types `expected` (words compared with runs of white space
 * as one). Ctrl-C is the operator's interrupt (exit 130); Ctrl-D, the end of
 * input, is a no. The command has written nothing when it asks.
 */
async function ask(question: string, expected: string, command: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  // A closed prompt (Ctrl-D, the end of input) leaves its question pending: the abort settles it.
  const asked = new AbortController();
  let interrupted = false;
  rl.on('SIGINT', () => {
    interrupted = true;
    asked.abort();
  });
  rl.on('close', () => asked.abort());
  try {
    const answer = await rl.question(question, { signal: asked.signal });
    return answer.trim().split(/\s+/).join(' ') === expected;
  } catch (err) {
    if (interrupted) throw new InterruptedError(`${command} interrupted at its confirmation prompt; nothing was changed.`);
    if (err instanceof Error && err.name === 'AbortError') return false;
    throw err;
  } finally {
    rl.close();
  }
}
