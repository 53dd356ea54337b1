import type { Io } from '../../src/cli/context.js';

/** An in-process `Io` for running `main` in unit tests: no terminal, output captured in `out` and `err`. */
export function captureIo(env: Record<string, string> = {}): Io & { out: string; err: string } {
  const captured = { out: '', err: '' };
  return Object.assign(captured, {
    stdout: { write: (s: string) => (captured.out += s) },
    stderr: { write: (s: string) => (captured.err += s) },
    env,
    cwd: '/nonexistent-dir-for-tests',
    stdinIsTTY: false,
    stderrIsTTY: false,
  });
}
