import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { repoRoot } from './harness.js';

/**
 * `migrate` on a real pseudo-terminal: a detached tmux pane of a given size,
 * read back with `capture-pane` as a user would see it, typed into with
 * `send-keys`. CI is unset inside, so the tool sees an interactive terminal.
 */
export class Terminal {
  private readonly socket = `migrate-tty-${process.pid}-${randomBytes(3).toString('hex')}`;
  private readonly session = 's';

  /** Starts `migrate <args>` in `cwd`; the pane prints `__EXIT <code>` when it ends. */
  constructor(args: string[], options: { cwd: string; env: Record<string, string>; columns?: number; rows?: number }) {
    const env = Object.entries({ TERM: 'xterm-256color', ...options.env }).map(([k, v]) => `${k}=${v}`);
    const command = ['env', '-u', 'CI', ...env, process.execPath, join(repoRoot, 'bin', 'migrate.js'), ...args].map((w) => `'${w.replace(/'/g, `'\\''`)}'`).join(' ');
    this.tmux('new-session', '-d', '-s', this.session, '-x', String(options.columns ?? 120), '-y', String(options.rows ?? 30), '-c', options.cwd, `${command}; echo "__EXIT $?"; sleep 60`);
  }

  /** The screen as text; `styled`: with its colour and attribute escapes (`capture-pane -e`). */
  screen(styled = false): string {
    return this.tmux('capture-pane', '-p', ...(styled ? ['-e'] : []), '-t', this.session);
  }

  /** Types keys (tmux key names: `Enter`, `C-c`, or literal text). */
  send(...keys: string[]): void {
    this.tmux('send-keys', '-t', this.session, ...keys);
  }

  /** Types `text` as it is (`send-keys -l`: a word such as `delete` is not taken for a key name). */
  type(text: string): void {
    this.tmux('send-keys', '-t', this.session, '-l', text);
  }

  async until(what: string, test: (screen: string) => boolean, timeoutMs = 30_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    let screen = '';
    while (Date.now() < deadline) {
      screen = this.screen();
      if (test(screen)) return screen;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`timed out waiting for ${what}; the screen:\n${screen}`);
  }

  /** Waits for the command to end; its exit code and the last screen. */
  async exit(timeoutMs = 60_000): Promise<{ code: number; screen: string }> {
    const screen = await this.until('the command to exit', (s) => /__EXIT \d+/.test(s), timeoutMs);
    return { code: Number(/__EXIT (\d+)/.exec(screen)![1]), screen };
  }

  close(): void {
    try {
      execFileSync('tmux', ['-L', this.socket, 'kill-server'], { stdio: 'ignore' });
    } catch {
      // the server is gone already
    }
  }

  private tmux(...args: string[]): string {
    return execFileSync('tmux', ['-L', this.socket, ...args], { encoding: 'utf8' });
  }
}
